//! Command-line flags of the operator (each also an environment variable).

/// Flight node image used when a FlightPool names none.
pub const DEFAULT_NODE_IMAGE: &str = "ghcr.io/trinity-data/flight-node:0.1.0";
