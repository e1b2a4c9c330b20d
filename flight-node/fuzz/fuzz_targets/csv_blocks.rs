//! The node's CSV block splitter, where it cuts: at a block boundary inside fuzzed records.
//!
//! `flight_node::csv::parse` cuts its input into 4 MiB blocks at record ends it finds by
//! following the quoting rules, and parses the blocks on separate threads, each with its
//! own decoder; a cut anywhere but at a record end changes the rows. Small inputs are one
//! block, so this target builds a body just over one block: a header, one filler record of
//! a few MiB (a quoted field, cheap to scan and parse), then the fuzzed records, placed so
//! that the block boundary falls at a fuzzer-chosen byte among them.
//!
//! Input: `choice:u8 at:u8 records`. Properties: as `csv_split` (never panics; accepts
//! exactly the rows arrow's plain reader reads, or both refuse): the filler row comes back
//! whole and the rows after it are those arrow's reader reads from the records.
#![no_main]

use arrow::array::{Array, StringArray};
use arrow::datatypes::DataType;
use flight_node_fuzz::csv;
use libfuzzer_sys::fuzz_target;

/// flight-node's `BLOCK_BYTES` (private in `csv.rs`; keep in step with it).
const BLOCK_BYTES: usize = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let [choice, at, records @ ..] = data else {
        return;
    };
    if records.is_empty() {
        return;
    }
    let delimiter = csv::DELIMITERS[usize::from(choice & 3)];
    // Always a given schema (inference would only see the filler).
    let Some(schema) = csv::schema(1 + (choice >> 2) % 3) else {
        return;
    };
    let d = char::from(delimiter);
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let header = format!("{}\n", names.join(&d.to_string()));
    // The filler: the last text column holds a long quoted value, the others are empty.
    let text = schema
        .fields()
        .iter()
        .rposition(|f| f.data_type() == &DataType::Utf8)
        .unwrap_or(0);
    let boundary = usize::from(*at) * records.len() / 256;
    let mut filler_row = Vec::new();
    let mut filler_len = 0;
    for i in 0..schema.fields().len() {
        if i > 0 {
            filler_row.push(delimiter);
        }
        if i == text {
            filler_row.push(b'"');
            let fixed = filler_row.len() + 2 + (schema.fields().len() - 1 - i);
            filler_len = BLOCK_BYTES - boundary - fixed;
            filler_row.resize(filler_row.len() + filler_len, b'x');
            filler_row.push(b'"');
        }
    }
    filler_row.push(b'\n');
    debug_assert_eq!(filler_row.len() + boundary, BLOCK_BYTES);

    let mut body = Vec::with_capacity(header.len() + filler_row.len() + records.len());
    body.extend_from_slice(header.as_bytes());
    body.extend_from_slice(&filler_row);
    body.extend_from_slice(records);
    drop(filler_row);

    let parsed = csv::parse(&body, Some(schema.clone()), delimiter);
    let Ok(schema) = parsed.schema else {
        panic!("a body with a header was refused: {:?}", parsed.schema);
    };
    // arrow's reader over the records alone gives the rows after the filler (a leading
    // empty line, which the reader skips, keeps a byte order mark at the start of the
    // records from being taken for the body's).
    let mut tail = Vec::with_capacity(records.len() + 1);
    tail.push(b'\n');
    tail.extend_from_slice(records);
    let reference = csv::reference_rows(&tail, schema.clone(), delimiter);
    match (&parsed.error, &reference) {
        (None, Ok(expected)) => {
            let first = parsed.batches.first().map(|b| b.num_rows()).unwrap_or(0);
            assert!(first > 0, "the filler row is missing");
            let filler_text = parsed.batches[0]
                .column(text)
                .as_any()
                .downcast_ref::<StringArray>()
                .map(|a| a.value(0).len());
            assert_eq!(filler_text, Some(filler_len), "the filler row changed");
            let mut after = vec![parsed.batches[0].slice(1, first - 1)];
            after.extend(parsed.batches[1..].iter().cloned());
            let got = csv::rows(&schema, &after);
            let want = csv::rows(&schema, expected);
            assert!(
                got == want,
                "rows after the filler differ:\nnode  {got:?}\narrow {want:?}"
            );
        }
        (Some(_), Err(_)) => {}
        (got, want) => panic!(
            "node {got:?} but arrow {:?}",
            want.as_ref()
                .map(|b| b.iter().map(|b| b.num_rows()).sum::<usize>())
        ),
    }
});
