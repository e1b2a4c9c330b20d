//! `flight-node`: a storage-backed Apache Arrow Flight server.
//!
//! Atoms upload a table once with `DoPut`, receive a small [`ticket`], and downstream
//! atoms fetch the table with `DoGet`. Every upload becomes an immutable, versioned dataset:
//! Parquet parts plus a [`manifest`] in object [`storage`] (the durable truth), and a hot
//! copy in a byte-bounded memory [`cache`] (speed only; losing it loses nothing).
//!
//! Modules: [`service`] (the Flight RPCs), [`node`] (the logic behind them), [`http`] (probes,
//! metrics, CSV upload/export), [`config`] (flags), [`server`] (start/stop), [`client`]
//! (a Rust client), [`versions`] (the version lifecycle and its invariants), [`contract`],
//! [`auth`], [`placement`] (which node owns each part) and [`fanout`] (work spread over the
//! pool), [`name`], [`ttl`].
#![forbid(unsafe_code)]

pub mod auth;
pub mod budget;
pub mod cache;
pub mod cancel;
pub mod client;
pub mod config;
pub mod conn;
pub mod consumers;
pub mod contract;
pub mod csv;
pub mod dictionary;
pub mod encode;
pub mod error;
pub mod fanout;
pub mod http;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod name;
pub mod node;
pub mod placement;
pub mod server;
pub mod service;
pub mod storage;
pub mod ticket;
pub mod ttl;
pub mod versions;
pub mod zerocopy;

pub use config::Config;
pub use error::{Error, Result};
