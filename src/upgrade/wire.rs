//! The messages of the hand-over (see the protocol in `upgrade`'s doc).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::metrics::{CounterSnapshot, History};
use crate::tls::KeyMaterial;

/// The hand-over format this build speaks. Version 2: counter history
/// folded and sent with `Released`, and the successor confirms the
/// take-over (`TookOver`) before the predecessor closes its sockets.
/// Version 3: established streams move after the take-over (`Streams`).
/// Version 4: the TLS session ticket keys travel in the header.
pub const HANDOVER_VERSION: u32 = 4;
/// The oldest predecessor format this build still accepts (version 2 sends
/// no streams, version 3 no ticket keys).
pub const OLDEST_HANDOVER_VERSION: u32 = 2;

/// What `baton upgrade` prints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub old_pid: u32,
    pub old_generation: u64,
    pub new_pid: u32,
    pub new_generation: u64,
    pub duration_ms: f64,
    /// Established streams that moved to the new process.
    #[serde(default)]
    pub moved: u64,
    /// Streams that stay in the old process and drain (TLS, or their
    /// listener or cluster is gone).
    #[serde(default)]
    pub staying: u64,
}

/// Predecessor → successor frames (length-prefixed JSON, read with recvmsg).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum ToSuccessor {
    Header(Box<Header>),
    /// The descriptors attached to this frame, in order.
    Sockets {
        names: Vec<String>,
    },
    /// Every socket was sent.
    End,
    /// The predecessor stopped accepting and serving admin: the successor
    /// owns everything now. `history`: every count of earlier generations
    /// as of this instant, the predecessor's own included (version 2).
    Released {
        #[serde(default)]
        history: Option<History>,
    },
    /// The hand-over will not happen (another upgrade runs, the predecessor
    /// drains, or it gave up waiting).
    Refused {
        reason: String,
    },
    /// Version 3, after `TookOver`: a batch of paused streams; the frame's
    /// descriptors are each stream's client and backend sockets, in order.
    Streams {
        streams: Vec<MovedStream>,
    },
    /// The batch the successor answered `Adopted` to is its own now.
    Commit,
    /// The batch stays with the predecessor (it gave up waiting): close
    /// your copies, never poll them.
    Resume,
    /// No more streams; `staying` drain in the predecessor.
    StreamsEnd {
        staying: u64,
    },
}

/// A paused stream as it travels: where it belongs, how far it got, and
/// the bytes read from one side and not yet written to the other.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MovedStream {
    pub listener: String,
    pub cluster: String,
    pub backend: String,
    pub backend_addr: SocketAddr,
    /// As the logs show it (the PROXY source where one was read).
    pub client: SocketAddr,
    #[serde(default)]
    pub sni: Option<String>,
    /// When the client connected, ms since the Unix epoch.
    pub started_ms: u64,
    /// Times it moved before this move.
    pub migrated: u32,
    pub received: u64,
    pub sent: u64,
    /// Client's FIN already passed to the backend.
    pub up_shut: bool,
    /// Backend's FIN already passed to the client.
    pub down_shut: bool,
    /// ms since the last byte moved.
    pub idle_ms: u64,
    #[serde(with = "hex")]
    pub up_pending: Vec<u8>,
    #[serde(with = "hex")]
    pub down_pending: Vec<u8>,
}

/// Bytes as a hex string: JSON has no bytes, and an array of numbers would
/// be four times the size.
mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(DIGITS[(b >> 4) as usize] as char);
            out.push(DIGITS[(b & 15) as usize] as char);
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        if text.len() % 2 != 0 {
            return Err(D::Error::custom("odd number of hex digits"));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(D::Error::custom("not a lowercase hex digit")),
        };
        text.as_bytes()
            .chunks(2)
            .map(|pair| Ok((digit(pair[0])? << 4) | digit(pair[1])?))
            .collect()
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub handover_version: u32,
    pub pid: u32,
    pub generation: u64,
    pub config_generation: u64,
    pub sockets: Vec<SocketInfo>,
    /// Version 1: own counts of the predecessor and the last report of
    /// every earlier generation it knew.
    #[serde(default)]
    pub counters: Vec<GenerationCounts>,
    /// Version 2: what earlier generations counted, the predecessor's own
    /// counts as one live entry; bounded (see `metrics::history`). Used
    /// only if the predecessor dies before `Released`.
    #[serde(default)]
    pub history: Option<History>,
    pub health: Vec<HealthState>,
    /// Predecessors still draining: (pid, generation). They report to the
    /// new process once it accepts.
    #[serde(default)]
    pub draining: Vec<(u32, u64)>,
    /// Version 4: session ticket keys, the one in use first, so clients
    /// resume across the upgrade.
    #[serde(default)]
    pub ticket_keys: Vec<TicketKey>,
}

/// A session ticket key as it travels (over the private hand-over
/// connection, like the sockets themselves); never shown by `Debug`.
#[derive(Clone, Serialize, Deserialize)]
pub struct TicketKey {
    #[serde(with = "hex")]
    pub name: Vec<u8>,
    #[serde(with = "hex")]
    pub secret: Vec<u8>,
    pub created: u64,
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl From<&KeyMaterial> for TicketKey {
    fn from(k: &KeyMaterial) -> TicketKey {
        TicketKey {
            name: k.name.to_vec(),
            secret: k.secret.to_vec(),
            created: k.created,
        }
    }
}

impl TicketKey {
    /// The key, if its parts have the lengths of ours.
    pub fn material(&self) -> Option<KeyMaterial> {
        Some(KeyMaterial {
            name: self.name.as_slice().try_into().ok()?,
            secret: self.secret.as_slice().try_into().ok()?,
            created: self.created,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketInfo {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationCounts {
    pub generation: u64,
    pub pid: u32,
    pub counts: CounterSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthState {
    pub cluster: String,
    pub address: String,
    pub addr: SocketAddr,
    pub down: bool,
}

/// Successor → predecessor lines on the hand-over connection.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FromSuccessor {
    /// Accepting on every listener; the predecessor may stop.
    Ready {
        pid: u32,
        generation: u64,
    },
    Failed {
        reason: String,
    },
    /// Version 2: the successor got `Released`, and serves admin and
    /// control; the predecessor may close its sockets.
    TookOver,
    /// Version 3: the successor holds the batch and will serve it on
    /// `Commit`; the streams at these indexes it cannot serve (its config
    /// has no such listener or cluster) stay with the predecessor.
    Adopted {
        refused: Vec<usize>,
    },
}

/// A draining process's periodic report to the accepting one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainReport {
    pub pid: u32,
    pub generation: u64,
    pub connections: u64,
    pub elapsed_seconds: f64,
    pub counts: CounterSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_stream_keeps_every_pending_byte() {
        let stream = MovedStream {
            listener: "web".into(),
            cluster: "app".into(),
            backend: "127.0.0.1:9".into(),
            backend_addr: "127.0.0.1:9".parse().expect("an address"),
            client: "[::1]:5".parse().expect("an address"),
            sni: Some("a.test".into()),
            started_ms: 1,
            migrated: 2,
            received: 3,
            sent: 4,
            up_shut: true,
            down_shut: false,
            idle_ms: 5,
            up_pending: (0..=255).collect(),
            down_pending: Vec::new(),
        };
        let text = serde_json::to_string(&stream).expect("serializes");
        assert!(text.contains("\"up_pending\":\"000102"), "{text}");
        let back: MovedStream = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.up_pending, stream.up_pending);
        assert!(back.down_pending.is_empty());
        let odd = text.replace("\"down_pending\":\"\"", "\"down_pending\":\"abc\"");
        assert!(serde_json::from_str::<MovedStream>(&odd).is_err());
    }
}
