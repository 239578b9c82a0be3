//! Session ticket keys that belong to the process, not to a snapshot.
//!
//! rustls's own ticketer lives inside one `ServerConfig`: every reload
//! (and every DNS change or upgrade) would make a new key and every client
//! would pay a full handshake exactly when nothing should move. These keys
//! are made once, kept by every snapshot the process builds, rotated on a
//! schedule (the previous key still opens tickets, so a ticket lives one to
//! two periods), and handed to the successor on upgrade. They live in memory
//! only.
//!
//! A ticket is `key name (16) | nonce (12) | ChaCha20-Poly1305(state)`; the
//! name says which key sealed it, the nonce is random per ticket.

use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// One key as it travels to a successor: its bytes never show in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    pub name: [u8; NAME_LEN],
    pub secret: [u8; SECRET_LEN],
    /// Unix seconds when it was made: the schedule goes on from there in
    /// the successor.
    pub created: u64,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

struct Key {
    material: KeyMaterial,
    aead: LessSafeKey,
}

impl Key {
    fn new(material: KeyMaterial) -> Key {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &material.secret)
            .expect("a 32-byte key is what ChaCha20-Poly1305 takes");
        Key {
            material,
            aead: LessSafeKey::new(unbound),
        }
    }
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The process's ticket keys: the key in use and the one before it.
pub struct TicketKeys {
    keys: RwLock<Keys>,
    /// Seconds a key is in use.
    rotation: AtomicU32,
    random: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("created", &self.created())
            .field("rotation", &self.rotation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TicketKeys {
    /// A fresh key, made now.
    pub fn new(rotation: Duration) -> TicketKeys {
        let random = SystemRandom::new();
        let current = Key::new(fresh(&random, now_unix()));
        TicketKeys {
            keys: RwLock::new(Keys {
                current,
                previous: None,
            }),
            rotation: AtomicU32::new(seconds(rotation)),
            random,
        }
    }

    /// The keys a predecessor handed on (in use first), or fresh ones when
    /// it sent none (an older build).
    pub fn handed_on(mut material: Vec<KeyMaterial>, rotation: Duration) -> TicketKeys {
        if material.is_empty() {
            return TicketKeys::new(rotation);
        }
        let current = Key::new(material.remove(0));
        let previous = (!material.is_empty()).then(|| Key::new(material.remove(0)));
        TicketKeys {
            keys: RwLock::new(Keys { current, previous }),
            rotation: AtomicU32::new(seconds(rotation)),
            random: SystemRandom::new(),
        }
    }

    /// What a successor needs: the key in use, then the previous one.
    pub fn hand_on(&self) -> Vec<KeyMaterial> {
        let keys = self.read();
        std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .map(|k| k.material.clone())
            .collect()
    }

    /// Unix seconds when the key in use was made.
    pub fn created(&self) -> u64 {
        self.read().current.material.created
    }

    pub fn set_rotation(&self, rotation: Duration) {
        self.rotation.store(seconds(rotation), Ordering::Relaxed);
    }

    /// When the key in use is due to be replaced, from now.
    pub fn due_in(&self) -> Duration {
        let due = self
            .created()
            .saturating_add(u64::from(self.rotation.load(Ordering::Relaxed)));
        Duration::from_secs(due.saturating_sub(now_unix()))
    }

    /// A new key in use; the one before it still opens its tickets, the one
    /// before that is forgotten.
    pub fn rotate(&self) {
        let fresh = Key::new(fresh(&self.random, now_unix()));
        let mut keys = self
            .keys
            .write()
            .expect("ticket key lock is never poisoned");
        let old = std::mem::replace(&mut keys.current, fresh);
        keys.previous = Some(old);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().expect("ticket key lock is never poisoned")
    }
}

fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX)
}

fn fresh(random: &SystemRandom, created: u64) -> KeyMaterial {
    let mut name = [0u8; NAME_LEN];
    let mut secret = [0u8; SECRET_LEN];
    random
        .fill(&mut name)
        .and_then(|()| random.fill(&mut secret))
        .expect("the system's random source works (getrandom)");
    KeyMaterial {
        name,
        secret,
        created,
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    /// A ticket opens until the key after the next is made: at most two
    /// periods (at least one), so that is the longest a client may keep it.
    fn lifetime(&self) -> u32 {
        self.rotation.load(Ordering::Relaxed).saturating_mul(2)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        let keys = self.read();
        ticket.extend_from_slice(&keys.current.material.name);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        // Sealed where it stands, the tag after it: one allocation.
        let tag = keys
            .current
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut ticket[NAME_LEN + NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.read();
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.material.name == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut plain = sealed.to_vec();
        let len = key
            .aead
            .open_in_place(nonce, Aad::empty(), &mut plain)
            .ok()?
            .len();
        plain.truncate(len);
        Some(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_opens_with_its_key_and_the_next_but_not_after_two_rotations() {
        let keys = TicketKeys::new(Duration::from_secs(60));
        let ticket = keys.encrypt(b"session state").expect("seals");
        assert_eq!(
            keys.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        keys.rotate();
        assert_eq!(
            keys.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        let newer = keys.encrypt(b"newer").expect("seals");
        keys.rotate();
        assert_eq!(keys.decrypt(&ticket), None, "two rotations old");
        assert_eq!(keys.decrypt(&newer).as_deref(), Some(&b"newer"[..]));
    }

    #[test]
    fn a_successor_opens_the_tickets_of_its_predecessor() {
        let old = TicketKeys::new(Duration::from_secs(60));
        let before = old.encrypt(b"before").expect("seals");
        old.rotate();
        let after = old.encrypt(b"after").expect("seals");
        let new = TicketKeys::handed_on(old.hand_on(), Duration::from_secs(60));
        assert_eq!(new.created(), old.created());
        assert_eq!(new.decrypt(&before).as_deref(), Some(&b"before"[..]));
        assert_eq!(new.decrypt(&after).as_deref(), Some(&b"after"[..]));
        let stranger = TicketKeys::new(Duration::from_secs(60));
        assert_eq!(stranger.decrypt(&after), None);
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        let keys = TicketKeys::new(Duration::from_secs(60));
        let ticket = keys.encrypt(b"state").expect("seals");
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(keys.decrypt(&bad), None, "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert_eq!(keys.decrypt(&ticket[..len]), None, "cut at {len}");
        }
        let shown = format!("{:?} {:?}", keys, keys.hand_on());
        assert!(
            !shown.contains("secret") && !shown.contains("name"),
            "{shown}"
        );
    }
}
