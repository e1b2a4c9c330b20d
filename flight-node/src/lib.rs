//! `flight-node`: a storage-backed Apache Arrow Flight server.
//!
//! Atoms upload a table once with `DoPut`, receive a small [`ticket`], and downstream
//! atoms fetch the table with `DoGet`. Every upload becomes an immutable, versioned dataset:
//! Parquet parts plus a [`manifest`] in object [`storage`] (the durable truth), and a hot
//! copy in a byte-bounded memory [`cache`] (speed only; losing it loses nothing).
//!
//! Modules: [`service`] (the Flight RPCs), [`node`] (the logic behind them), [`http`] (probes,
//! metrics, CSV upload/export), [`config`] (flags), [`server`] (start/stop), [`client`]
//! (a Rust client, from `flight-core`), [`parts`] (reading parts back), [`versions`] (the version lifecycle and its invariants), [`contract`],
//! [`auth`], [`placement`] (which node owns each part) and [`fanout`] (work spread over the
//! pool), [`name`], [`ttl`].
#![forbid(unsafe_code)]

// The contracts shared with clients and the operator live in `flight-core`; they keep
// their paths here.
pub use flight_core::{
    client, clock, consumers, contract, error, manifest, name, placement, process, protocol,
    storage, ticket, ttl, versions,
};

pub mod auth;
pub mod budget;
pub mod cache;
pub mod cancel;
pub mod config;
pub mod conn;
pub mod csv;
pub mod dictionary;
pub mod encode;
pub mod fanout;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod node;
pub mod parts;
pub mod request_metrics;
pub mod server;
pub mod service;
pub mod wire;
pub mod zerocopy;

pub use config::Config;
pub use error::{Error, Result};
