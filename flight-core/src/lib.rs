//! `flight-core`: what flight-node shares with its clients and the operator, without the
//! server. The [`clock`], dataset identity ([`name`]), [`ticket`]s and their signing, [`ttl`]s, typed
//! [`manifest`]s and the storage layout ([`storage`]), the version lifecycle and its
//! invariants ([`versions`]), data [`contract`]s, [`consumers`], [`placement`] of parts on a
//! pool, the action [`protocol`], a node [`client`], and the [`process`] plumbing both
//! binaries share.
//!
//! Nothing here serves requests, encodes Parquet or parses CSV; the operator depends on this
//! crate alone.
#![forbid(unsafe_code)]

pub mod client;
pub mod clock;
pub mod consumers;
pub mod contract;
pub mod error;
pub mod manifest;
pub mod name;
pub mod placement;
pub mod process;
pub mod protocol;
pub mod storage;
pub mod ticket;
pub mod ttl;
pub mod versions;

pub use error::{Error, Result};
