//! baton: a TCP/TLS reverse proxy and load balancer whose config and binary
//! can be replaced while it serves.
//!
//! A client's bytes travel `proxy::serve` (accept) → `proxy::route` →
//! `balance` → `proxy::connect` → `proxy::copy`. `app` wires the process,
//! `admin` serves metrics and health, `drain` stops it without cutting
//! streams.

#![deny(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod config;
pub mod control;
pub mod dns;
pub mod drain;
pub mod health;
pub mod limits;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod reload;
pub mod state;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod upgrade;
pub mod watch;

pub use app::{RunOptions, Start, run};
