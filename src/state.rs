//! The process's one state machine. Every operation — reload, upgrade
//! (either side of one), stop — is a state; a request that does not fit the
//! current state is refused with the state in the reason. The owner (the
//! control loop in `app`) is the only writer; admin, control and the accept
//! loops read the published value from a `watch` channel.
//!
//! ```text
//!             ┌──────────── rolled back ───────────┐
//!             ▼                                    │
//! starting → serving ⇄ reloading       upgrading: spawned → sockets sent
//!    │          │                        → successor ready → releasing
//!    │          └──────── stop ────────┐                          │
//! taking over (successor) → serving    ▼                          ▼
//!                                   draining ──────────→ stopped  (handed over)
//! ```

use tokio::sync::watch;

/// The steps of an upgrade, as the predecessor sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStep {
    /// A successor was started (or asked from outside); no socket sent yet.
    Spawned,
    /// Every socket went out; waiting for the successor to be ready.
    SocketsSent,
    /// The successor accepts; this process pauses its accept loops, stops
    /// admin and control and tells it that it owns everything.
    Releasing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Binding, building the first snapshot.
    Starting,
    /// A successor that accepts beside its predecessor and waits for the
    /// release; admin and control are not served yet.
    TakingOver,
    /// Accepting, with no operation running.
    Serving,
    /// A reload is being read, validated and bound.
    Reloading,
    Upgrading(UpgradeStep),
    /// Not accepting any more (handed over, or stopping); open streams run
    /// out or are cut at `drain.timeout`.
    Draining,
    Stopped,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::TakingOver => "taking over",
            State::Serving => "ready",
            State::Reloading => "reloading",
            State::Upgrading(UpgradeStep::Spawned) => "upgrading (successor started)",
            State::Upgrading(UpgradeStep::SocketsSent) => "upgrading (sockets sent)",
            State::Upgrading(UpgradeStep::Releasing) => "upgrading (releasing)",
            State::Draining => "draining",
            State::Stopped => "stopped",
        }
    }

    /// Whether this process's listeners are accepting (`/readyz` is 200).
    pub fn accepting(self) -> bool {
        matches!(
            self,
            State::Serving | State::Reloading | State::Upgrading(_)
        )
    }
}

/// What moves the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Listeners, admin and control serve.
    Ready,
    /// A successor that got its sockets starts accepting beside the
    /// predecessor.
    AcceptingBeside,
    ReloadStarted,
    ReloadEnded,
    UpgradeStarted,
    SocketsSent,
    SuccessorReady,
    /// The successor confirmed that it owns everything.
    HandedOver,
    /// The upgrade failed at any step; this process keeps serving.
    RolledBack,
    /// A stop signal (or, for a successor, the predecessor's rollback).
    Stop,
    Drained,
}

/// A request the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event:?} while {state}", state = .state.as_str())]
pub struct Refused {
    pub state: State,
    pub event: Event,
}

impl State {
    /// The state after `event`, or why `event` does not fit now. The one
    /// table of every allowed transition.
    pub fn next(self, event: Event) -> Result<State, Refused> {
        use Event as E;
        use State as S;
        use UpgradeStep as U;
        let next = match (self, event) {
            (S::Starting, E::Ready) => S::Serving,
            (S::Starting, E::AcceptingBeside) => S::TakingOver,
            (S::TakingOver, E::Ready) => S::Serving,
            (S::Serving, E::ReloadStarted) => S::Reloading,
            (S::Reloading, E::ReloadEnded) => S::Serving,
            (S::Serving, E::UpgradeStarted) => S::Upgrading(U::Spawned),
            (S::Upgrading(U::Spawned), E::SocketsSent) => S::Upgrading(U::SocketsSent),
            (S::Upgrading(U::SocketsSent), E::SuccessorReady) => S::Upgrading(U::Releasing),
            (S::Upgrading(U::Releasing), E::HandedOver) => S::Draining,
            (S::Upgrading(_), E::RolledBack) => S::Serving,
            (S::Starting | S::TakingOver, E::Stop) => S::Draining,
            // A reload in flight finishes in its task; its result is dropped.
            (S::Serving | S::Reloading, E::Stop) => S::Draining,
            // An upgrade is rolled back first; the owner then stops.
            (S::Draining, E::Drained) => S::Stopped,
            (state, event) => return Err(Refused { state, event }),
        };
        Ok(next)
    }
}

/// The published state: one writer, many readers.
pub struct Machine {
    tx: watch::Sender<State>,
}

impl Default for Machine {
    fn default() -> Machine {
        Machine {
            tx: watch::Sender::new(State::Starting),
        }
    }
}

impl Machine {
    pub fn get(&self) -> State {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.tx.subscribe()
    }

    /// Moves to the next state and publishes it, or refuses.
    pub fn apply(&self, event: Event) -> Result<State, Refused> {
        let next = self.get().next(event)?;
        self.tx.send_replace(next);
        tracing::info!(state = next.as_str(), ?event, "state");
        Ok(next)
    }

    /// Forces `state` for an in-between step that has no refusal (a
    /// stop that must land whatever runs).
    pub fn force(&self, state: State) {
        self.tx.send_replace(state);
        tracing::info!(state = state.as_str(), "state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [State; 9] = [
        State::Starting,
        State::TakingOver,
        State::Serving,
        State::Reloading,
        State::Upgrading(UpgradeStep::Spawned),
        State::Upgrading(UpgradeStep::SocketsSent),
        State::Upgrading(UpgradeStep::Releasing),
        State::Draining,
        State::Stopped,
    ];
    const EVENTS: [Event; 11] = [
        Event::Ready,
        Event::AcceptingBeside,
        Event::ReloadStarted,
        Event::ReloadEnded,
        Event::UpgradeStarted,
        Event::SocketsSent,
        Event::SuccessorReady,
        Event::HandedOver,
        Event::RolledBack,
        Event::Stop,
        Event::Drained,
    ];

    #[test]
    fn every_transition_outside_the_table_is_refused_with_the_state() {
        let allowed = [
            (State::Starting, Event::Ready),
            (State::Starting, Event::AcceptingBeside),
            (State::Starting, Event::Stop),
            (State::TakingOver, Event::Ready),
            (State::TakingOver, Event::Stop),
            (State::Serving, Event::ReloadStarted),
            (State::Serving, Event::UpgradeStarted),
            (State::Serving, Event::Stop),
            (State::Reloading, Event::ReloadEnded),
            (State::Reloading, Event::Stop),
            (State::Upgrading(UpgradeStep::Spawned), Event::SocketsSent),
            (State::Upgrading(UpgradeStep::Spawned), Event::RolledBack),
            (
                State::Upgrading(UpgradeStep::SocketsSent),
                Event::SuccessorReady,
            ),
            (
                State::Upgrading(UpgradeStep::SocketsSent),
                Event::RolledBack,
            ),
            (State::Upgrading(UpgradeStep::Releasing), Event::HandedOver),
            (State::Upgrading(UpgradeStep::Releasing), Event::RolledBack),
            (State::Draining, Event::Drained),
        ];
        let mut refused = 0;
        for state in STATES {
            for event in EVENTS {
                match state.next(event) {
                    Ok(_) => assert!(
                        allowed.contains(&(state, event)),
                        "{state:?} + {event:?} must be refused"
                    ),
                    Err(e) => {
                        assert!(!allowed.contains(&(state, event)));
                        assert_eq!(e, Refused { state, event });
                        assert!(e.to_string().contains(state.as_str()), "{e}");
                        refused += 1;
                    }
                }
            }
        }
        assert_eq!(refused, STATES.len() * EVENTS.len() - allowed.len());
    }

    #[test]
    fn no_reload_or_upgrade_while_handing_over_or_draining() {
        for state in [
            State::TakingOver,
            State::Reloading,
            State::Upgrading(UpgradeStep::Spawned),
            State::Upgrading(UpgradeStep::SocketsSent),
            State::Upgrading(UpgradeStep::Releasing),
            State::Draining,
            State::Stopped,
        ] {
            assert!(state.next(Event::ReloadStarted).is_err(), "{state:?}");
            assert!(state.next(Event::UpgradeStarted).is_err(), "{state:?}");
        }
    }

    #[test]
    fn a_whole_upgrade_and_a_rollback() {
        let m = Machine::default();
        let mut seen = m.subscribe();
        m.apply(Event::Ready).unwrap();
        assert!(seen.has_changed().unwrap());
        assert_eq!(*seen.borrow_and_update(), State::Serving);
        for e in [Event::UpgradeStarted, Event::SocketsSent, Event::RolledBack] {
            m.apply(e).unwrap();
        }
        assert_eq!(m.get(), State::Serving);
        for e in [
            Event::UpgradeStarted,
            Event::SocketsSent,
            Event::SuccessorReady,
            Event::HandedOver,
        ] {
            m.apply(e).unwrap();
        }
        assert_eq!(m.get(), State::Draining);
        assert!(!m.get().accepting());
        m.apply(Event::Drained).unwrap();
        assert_eq!(m.get(), State::Stopped);
    }
}
