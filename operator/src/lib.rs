//! `flight-operator`: Kubernetes controllers for `FlightPool` and `ArrowDataset` resources.
//!
//! Pools become StatefulSets of flight nodes; datasets get a status from their manifests in
//! object storage, a TTL, and a finalizer that removes their Parquet objects.
#![forbid(unsafe_code)]

pub mod config;
pub mod controller;
pub mod crd;
pub mod discovery;
#[cfg(test)]
pub mod fixtures;
pub mod gc;
pub mod http;
pub mod metrics;
pub mod runtime;
pub mod ttl;
