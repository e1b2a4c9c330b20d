//! Writes the seed corpora under `corpus/<target>/` (run by `./run --seeds`; the files are
//! committed, so this is only needed when the samples change).
//!
//! `cargo run --example seed_corpus -- <fuzz dir>`

use std::fs;
use std::path::{Path, PathBuf};

use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::FlightData;
use flight_node::name::DatasetId;
use flight_node::ticket::{Ticket, TicketSigner};
use flight_node_fuzz::frame::{self, Start};
use flight_node_fuzz::samples;
use futures::TryStreamExt;

type Error = Box<dyn std::error::Error>;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn with(first: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    v.extend_from_slice(rest);
    v
}

/// The messages a Rust Flight client sends for a table: schema, then dictionaries and
/// batches.
fn encode(table: &samples::Table) -> Result<Vec<FlightData>, Error> {
    let batches = table.batches.clone().into_iter().map(Ok);
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(table.schema.clone())
        .with_dictionary_handling(DictionaryHandling::Resend)
        .build(futures::stream::iter(batches));
    Ok(futures::executor::block_on(stream.try_collect())?)
}

fn main() -> Result<(), Error> {
    let root = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let corpus = root.join("corpus");

    // Tickets: mode byte 0 (no key) or 1 (the target's key), then the ticket.
    let dir = corpus.join("ticket");
    let signer = TicketSigner::new(b"fuzzing-key-0123456789".to_vec())?;
    let t = Ticket::new(DatasetId::new("analytics", "sales-2024")?, 42);
    let tickets: Vec<(&str, Vec<u8>)> = vec![
        ("plain", with(0, t.encode(None).as_bytes())),
        ("part", with(0, t.with_part(3).encode(None).as_bytes())),
        ("signed", with(1, t.encode(Some(&signer)).as_bytes())),
        (
            "signed-part",
            with(1, t.with_part(0).encode(Some(&signer)).as_bytes()),
        ),
        ("default-ns", with(0, b"ads1:default/x@1")),
        ("leading-zeros", with(0, b"ads1:a/b@0007#00")),
        (
            "big-version",
            with(0, b"ads1:a/b@18446744073709551615#4294967295"),
        ),
        ("traversal", with(0, b"ads1:../etc/passwd@1")),
        ("tilde", with(1, b"ads1:a/b@1~~AAAA")),
    ];
    for (name, bytes) in tickets {
        write(&dir, name, &bytes)?;
    }

    // Descriptors: NUL-separated path elements.
    let dir = corpus.join("descriptor");
    let paths: [(&str, &[u8]); 8] = [
        ("one", b"sales"),
        ("two", b"analytics\0sales-2024"),
        ("three", b"a\0b\0c"),
        ("empty", b""),
        ("dots", b"..\0x"),
        ("long", &[b'a'; 64]),
        ("upper", b"Sales\0-a"),
        ("utf8", "n\u{e4}me\0x".as_bytes()),
    ];
    for (name, bytes) in paths {
        write(&dir, name, bytes)?;
    }

    // DoPut streams: each sample table whole (arbitrary start), and its data messages
    // after the sample schema (schema start).
    let dir = corpus.join("doput_decode");
    for (i, table) in samples::tables()?.iter().enumerate() {
        let messages = encode(table)?;
        let whole = frame::write(Start::Arbitrary, &messages).ok_or("a message is too long")?;
        write(&dir, &format!("{}-stream", table.name), &whole)?;
        let data = frame::write(Start::Schema(i), &messages[1..]).ok_or("too long")?;
        write(&dir, &format!("{}-data", table.name), &data)?;
    }

    // CSV: choice byte (delimiter in bits 0-1, schema in bits 2-3), then the body.
    let dir = corpus.join("csv_split");
    let bodies: [(&str, u8, &[u8]); 8] = [
        ("inferred", 0, b"id,s,x\n1,a,1.5\n2,\"b,c\",2\n3,,\n"),
        (
            "quoted-newline",
            0b0100,
            b"id,s\n1,\"multi\nline \"\"q\"\"\"\n2,x\n",
        ),
        ("crlf", 0b0100, b"id,s\r\n1,a\r\n2,b"),
        ("semicolon", 0b1001, b"a;b;c\nx;\"y;z\";w\n"),
        (
            "tab",
            0b1110,
            b"x\tflag\tday\tt\n1.5\ttrue\t2024-01-31\tz\n",
        ),
        ("pipe-header-only", 0b0111, b"a|b\n"),
        ("quote-mid-field", 0b1000, b"a,b,c\n5\"inch,\"q\"\"\",3\n"),
        ("ragged", 0b0100, b"id,s\n1\n2,b,extra\n"),
    ];
    for (name, choice, body) in bodies {
        write(&dir, name, &with(choice, body))?;
    }

    // CSV blocks: choice byte, boundary byte, then the records after the filler.
    let dir = corpus.join("csv_blocks");
    let records: [(&str, u8, u8, &[u8]); 5] = [
        ("plain", 0, 128, b"1,a\n2,b\n3,c\n"),
        (
            "quoted-newlines",
            0,
            40,
            b"1,\"x\ny\"\n2,\"\"\"\n\"\"\"\n3,z\n",
        ),
        ("crlf", 0, 200, b"1,a\r\n2,\"b\r\nc\"\r\n3,d\r\n"),
        (
            "three-columns",
            0b0101,
            100,
            b"x;\"a;\n\";c\nq;r;s\n\"\";\"\";\n",
        ),
        (
            "no-final-newline",
            0b1010,
            250,
            b"1.5\ttrue\t2024-01-01\t\"t\nu\"\n2\tfalse\t\tv",
        ),
    ];
    for (name, choice, at, body) in records {
        let mut bytes = vec![choice, at];
        bytes.extend_from_slice(body);
        write(&dir, name, &bytes)?;
    }
    Ok(())
}
