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

/// Known findings (each with a reproducer in `artifacts-found/`) are stepped around so
/// that a run looks for new ones; `FUZZ_STRICT=1` in the environment checks them too, to
/// confirm a fix.
pub fn strict() -> bool {
    static STRICT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRICT.get_or_init(|| std::env::var_os("FUZZ_STRICT").is_some_and(|v| v == "1"))
}
