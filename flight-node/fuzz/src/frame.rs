//! How `doput_decode` reads a list of Flight messages from fuzz input.
//!
//! ```text
//! input   = flags:u8 [schema:u8] message*
//! message = header_len:u16le body_len:u16le header body
//! ```
//!
//! Bit 0 of `flags` set: the stream starts with the schema message of sample table
//! `schema % N` (a valid schema, so mutations spend their time on data messages); clear:
//! every message comes from the input. Lengths are cut to what is left of the input.

use arrow_flight::FlightData;
use bytes::Bytes;

/// At most this many messages are read from one input.
pub const MAX_MESSAGES: usize = 64;

/// Whether the stream starts with a sample schema, and which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Arbitrary,
    Schema(usize),
}

/// Splits fuzz input into its start and its messages.
pub fn parse(data: &[u8]) -> (Start, Vec<FlightData>) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return (Start::Arbitrary, Vec::new());
    };
    let start = if flags & 1 == 1 {
        match rest.split_first() {
            Some((&i, r)) => {
                rest = r;
                Start::Schema(usize::from(i))
            }
            None => Start::Schema(0),
        }
    } else {
        Start::Arbitrary
    };
    let mut messages = Vec::new();
    while rest.len() >= 4 && messages.len() < MAX_MESSAGES {
        let header_len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let body_len = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
        rest = &rest[4..];
        let header_len = header_len.min(rest.len());
        let (header, r) = rest.split_at(header_len);
        let body_len = body_len.min(r.len());
        let (body, r) = r.split_at(body_len);
        rest = r;
        messages.push(FlightData {
            data_header: Bytes::copy_from_slice(header),
            data_body: Bytes::copy_from_slice(body),
            ..Default::default()
        });
    }
    (start, messages)
}

/// The inverse of [`parse`], for writing seeds. Messages longer than a length field can
/// say are refused.
pub fn write(start: Start, messages: &[FlightData]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match start {
        Start::Arbitrary => out.push(0),
        Start::Schema(i) => {
            out.push(1);
            out.push(u8::try_from(i).ok()?);
        }
    }
    for m in messages {
        let h = u16::try_from(m.data_header.len()).ok()?;
        let b = u16::try_from(m.data_body.len()).ok()?;
        out.extend_from_slice(&h.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&m.data_header);
        out.extend_from_slice(&m.data_body);
    }
    Some(out)
}
