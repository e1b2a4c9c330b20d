//! Shared pieces of the flight-node fuzz targets: the input framing of `doput_decode`,
//! sample tables (seed corpora and the schemas `doput_decode` starts from), the DoPut
//! decode path as the server runs it, a panic guard that mirrors the server's
//! `catch_unwind`, and a driver for the streaming CSV parser.

pub mod csv;
pub mod doput;
pub mod frame;
pub mod guard;
pub mod labels;
pub mod samples;
