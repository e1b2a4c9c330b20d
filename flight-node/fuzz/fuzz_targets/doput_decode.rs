//! DoPut's message decoding, as the server runs it, on fuzzed Flight messages.
//!
//! Input: see `flight_node_fuzz::frame` (a valid sample schema message first, or fully
//! arbitrary messages). Property: decoding refuses the stream (a panic inside arrow's IPC
//! decoder counts as a refusal, as the server's `catch_unwind` makes it one) or yields
//! batches that pass `validate_full`; and whatever the node then does with accepted batches
//! (concat, IPC encode, its DoGet messages, its Parquet or Arrow IPC part) never panics,
//! and a hot read gives back the accepted rows.
#![no_main]

use flight_node_fuzz::{doput, frame, guard, samples};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        guard::install();
        let _ = samples::schema_messages();
    },
    |data: &[u8]| {
        let (start, mut messages) = frame::parse(data);
        if let frame::Start::Schema(i) = start {
            let schemas = samples::schema_messages();
            let (_, message) = &schemas[i % schemas.len()];
            messages.insert(0, message.clone());
        }
        let decoded = doput::decode(messages);
        let debug = std::env::var_os("FUZZ_DEBUG").is_some();
        match &decoded {
            Ok(a) => {
                if debug {
                    let rows: Vec<usize> = a.batches.iter().map(|b| b.num_rows()).collect();
                    eprintln!("decoded {:?}, rows {rows:?}", a.schema);
                }
                let used = doput::use_batches(a);
                if debug {
                    eprintln!("accepted {} batches: {used:?}", a.batches.len());
                }
            }
            Err(e) if debug => eprintln!("refused: {}", e.0),
            Err(_) => {}
        }
    }
);
