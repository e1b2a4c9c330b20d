//! FlightPool controller: validate → build → apply → status.

pub mod build;
