//! The node's streaming CSV reader (`flight_node::csv::parse`) on arbitrary bytes.
//!
//! Input: `choice:u8 body`; the low bits of `choice` pick the delimiter, the next ones a
//! schema (or inference). Properties: never panics, never allocates more than the fuzzer's
//! limit, sends a schema or an error, and, where it accepts the body, reads the same rows
//! as arrow's plain CSV reader over the whole body (a refusal on one side must be a refusal
//! on the other). Not compared: bodies whose header has another number of fields
//! than the schema (the node ignores the header when a schema is given; arrow's reader
//! checks its number of fields).
#![no_main]

use flight_node_fuzz::csv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    let delimiter = csv::DELIMITERS[usize::from(choice & 3)];
    let parsed = csv::parse(body, csv::schema(choice >> 2), delimiter);
    let Ok(schema) = parsed.schema else {
        return;
    };
    if csv::header_fields(body, delimiter) != schema.fields().len() {
        return;
    }
    let reference = csv::reference(body, schema.clone(), delimiter);
    match (&parsed.error, &reference) {
        (None, Ok(expected)) => {
            let got = csv::rows(&schema, &parsed.batches);
            let want = csv::rows(&schema, expected);
            assert!(got == want, "rows differ:\nnode  {got:?}\narrow {want:?}");
        }
        (Some(_), Err(_)) => {}
        (got, want) => panic!(
            "node {got:?} but arrow {:?}",
            want.as_ref().map(|b| b.len())
        ),
    }
});
