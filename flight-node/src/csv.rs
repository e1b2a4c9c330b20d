//! Streaming CSV to Arrow, for the HTTP upload and the `load` action.
//!
//! Runs on a blocking thread: bytes arrive from an async body through a bridge and are cut
//! into blocks at record boundaries (quote-aware, so a quoted field may hold newlines);
//! blocks are parsed in parallel, one thread per block and at most one block per core in
//! flight, and their batches leave in input order through a bounded channel. Memory holds a
//! few blocks of text and a few batches, whatever the size of the body.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::sync::Arc;
use std::thread::ScopedJoinHandle;

use arrow::array::RecordBatch;
use arrow::csv::reader::Format;
use arrow::csv::ReaderBuilder;
use arrow::datatypes::SchemaRef;
use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot};
use tokio_util::io::SyncIoBridge;

use crate::error::{Error, Result};

/// Bytes read before inferring the schema.
const SNIFF_BYTES: usize = 1 << 20;
/// Rows per Arrow batch.
const BATCH_ROWS: usize = 64 * 1024;
/// Text parsed by one thread at a time.
const BLOCK_BYTES: usize = 4 << 20;
/// A single record longer than this is refused (it usually means a quote left open).
const MAX_RECORD_BYTES: usize = 64 << 20;
/// The quote character of the accepted dialect (RFC 4180: a doubled quote escapes one).
const QUOTE: u8 = b'"';

/// Parses CSV from `reader`, sends the schema once, then batches, then returns.
/// Parse errors are sent to whichever channel is waiting, as `InvalidArgument`.
pub fn parse<R>(
    reader: R,
    schema: Option<SchemaRef>,
    delimiter: u8,
    schema_tx: oneshot::Sender<Result<SchemaRef>>,
    tx: mpsc::Sender<Result<RecordBatch>>,
) -> Result<()>
where
    R: AsyncRead + Unpin + Send,
{
    let mut input = BufReader::with_capacity(SNIFF_BYTES, SyncIoBridge::new(reader));
    let prepared = sniff(&mut input, schema, delimiter);
    let (head, schema, format) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            let _ = schema_tx.send(Err(e));
            return Err(Error::invalid(msg));
        }
    };
    if schema_tx.send(Ok(schema.clone())).is_err() {
        return Ok(());
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
    let parser = BlockParser {
        schema,
        format: format.with_header(false),
    };
    let sizes = Sizes {
        block: BLOCK_BYTES,
        max_record: MAX_RECORD_BYTES,
    };
    if let Err(e) = parse_blocks(&mut input, head, delimiter, &parser, workers, sizes, &tx) {
        let _ = tx.blocking_send(Err(e));
    }
    Ok(())
}

/// Block size and the longest record accepted.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    block: usize,
    max_record: usize,
}

/// Parses one block of whole records.
struct BlockParser {
    schema: SchemaRef,
    format: Format,
}

impl BlockParser {
    fn parse(&self, block: Vec<u8>) -> Parsed {
        ReaderBuilder::new(self.schema.clone())
            .with_format(self.format.clone())
            .with_batch_size(BATCH_ROWS)
            .build_buffered(Cursor::new(block))
            .map_err(|e| e.to_string())?
            .map(|b| b.map_err(|e| e.to_string()))
            .collect()
    }
}

/// Reads the body block by block after the header record, parses up to `workers` blocks
/// at once and sends their batches in order. Returns the first error; stops quietly when
/// the receiver is gone (the upload was abandoned).
fn parse_blocks<R: Read>(
    input: &mut R,
    head: Vec<u8>,
    delimiter: u8,
    parser: &BlockParser,
    workers: usize,
    sizes: Sizes,
    tx: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<()> {
    let mut splitter = Splitter::new(delimiter);
    let mut buf = head;
    // The header record: its names were used (or a contract's schema applies).
    let mut eof = false;
    loop {
        if let Some(end) = splitter.scan_first(&buf) {
            buf.drain(..end);
            splitter.consumed(end);
            break;
        }
        if eof {
            return Ok(()); // a header and no rows
        }
        eof = fill(input, &mut buf, sizes.block)?;
        if !eof && buf.len() >= sizes.max_record {
            return Err(record_too_long(sizes.max_record));
        }
    }
    std::thread::scope(|scope| {
        let mut pending: VecDeque<ScopedJoinHandle<'_, Parsed>> = VecDeque::new();
        let mut rows_before = 0usize;
        loop {
            if !eof && buf.len() < sizes.block {
                let missing = sizes.block - buf.len();
                eof = fill(input, &mut buf, missing)?;
            }
            let end = if eof {
                buf.len()
            } else {
                match splitter.scan(&buf) {
                    Some(end) => end,
                    None if buf.len() >= sizes.max_record => {
                        return Err(record_too_long(sizes.max_record))
                    }
                    None => {
                        eof = fill(input, &mut buf, sizes.block)?;
                        continue;
                    }
                }
            };
            if end > 0 {
                let rest = buf.split_off(end);
                let block = std::mem::replace(&mut buf, rest);
                splitter.consumed(end);
                let handle = std::thread::Builder::new()
                    .name("csv-parse".into())
                    .spawn_scoped(scope, move || parser.parse(block))
                    .map_err(|e| Error::Internal(format!("failed to start a CSV parser: {e}")))?;
                pending.push_back(handle);
            }
            // One block more than there are parsers: the next one is read while they work.
            while pending.len() > workers || (eof && buf.is_empty() && !pending.is_empty()) {
                let Some(handle) = pending.pop_front() else {
                    break;
                };
                if !forward(handle, &mut rows_before, tx)? {
                    return Ok(());
                }
            }
            if eof && buf.is_empty() {
                return Ok(());
            }
        }
    })
}

type Parsed = std::result::Result<Vec<RecordBatch>, String>;

/// Waits for a block's batches and sends them on; false when the receiver is gone.
fn forward(
    handle: ScopedJoinHandle<'_, Parsed>,
    rows_before: &mut usize,
    tx: &mpsc::Sender<Result<RecordBatch>>,
) -> Result<bool> {
    let parsed = handle
        .join()
        .map_err(|_| Error::Internal("a CSV parser thread panicked".into()))?;
    let batches = parsed.map_err(|msg| {
        // Line numbers count from the block; make them count from the body.
        Error::invalid(format!(
            "failed to parse CSV: {}",
            shift_line_numbers(&msg, *rows_before + 1)
        ))
    })?;
    for batch in batches {
        *rows_before += batch.num_rows();
        if tx.blocking_send(Ok(batch)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Appends up to `more` bytes of input to `buf`; true at the end of input.
fn fill<R: Read>(input: &mut R, buf: &mut Vec<u8>, more: usize) -> Result<bool> {
    // Exactly what is asked for: growing by doubling would copy the block.
    buf.reserve_exact(more);
    let missing = more as u64;
    let got = input
        .take(missing)
        .read_to_end(buf)
        .map_err(|e| Error::invalid(format!("failed to read the CSV body: {e}")))?;
    Ok((got as u64) < missing)
}

fn record_too_long(max: usize) -> Error {
    Error::invalid(format!(
        "no CSV record ends within {} MiB: is a quote left open, or do lines end in a bare carriage return?",
        max >> 20
    ))
}

/// Adds `by` to every number that follows the word `line` in an error message.
fn shift_line_numbers(msg: &str, by: usize) -> String {
    let mut out = String::with_capacity(msg.len() + 8);
    let mut rest = msg;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

/// Where records end, found by following the quoting rules of the CSV reader: a field
/// that starts with a quote runs to the matching quote (a doubled quote is part of it),
/// so newlines inside it do not end the record; a quote elsewhere is an ordinary byte.
#[derive(Debug)]
struct Splitter {
    delimiter: u8,
    state: Field,
    /// Bytes of the buffer already scanned.
    scanned: usize,
    /// End of the last complete record seen (just after its newline).
    last_end: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Outside quotes (including at the start of a field).
    Unquoted,
    Quoted,
    /// A quote inside a quoted field: closes it, unless another quote follows.
    QuoteInQuoted,
}

impl Splitter {
    fn new(delimiter: u8) -> Self {
        Self {
            delimiter,
            state: Field::Unquoted,
            scanned: 0,
            last_end: None,
        }
    }

    /// Scans what is new in `buf`; returns the end of the last complete record.
    fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        self.scan_until(buf, false)
    }

    /// Scans until the first record ends; returns its end.
    fn scan_first(&mut self, buf: &[u8]) -> Option<usize> {
        self.scan_until(buf, true)
    }

    fn scan_until(&mut self, buf: &[u8], first: bool) -> Option<usize> {
        let mut i = self.scanned;
        while i < buf.len() {
            match self.state {
                Field::Quoted => match memchr::memchr(QUOTE, &buf[i..]) {
                    Some(q) => {
                        i += q + 1;
                        self.state = Field::QuoteInQuoted;
                    }
                    None => i = buf.len(),
                },
                Field::QuoteInQuoted => {
                    if buf[i] == QUOTE {
                        self.state = Field::Quoted;
                        i += 1;
                    } else {
                        // The field is closed; this byte is read as outside quotes.
                        self.state = Field::Unquoted;
                    }
                }
                Field::Unquoted => match memchr::memchr2(b'\n', QUOTE, &buf[i..]) {
                    None => i = buf.len(),
                    Some(k) => {
                        let at = i + k;
                        i = at + 1;
                        if buf[at] == b'\n' {
                            self.last_end = Some(i);
                            if first {
                                break;
                            }
                        } else if at == 0 || buf[at - 1] == self.delimiter || buf[at - 1] == b'\n' {
                            // A quote opens a quoted field only at the start of a field.
                            self.state = Field::Quoted;
                        }
                    }
                },
            }
        }
        self.scanned = i;
        self.last_end
    }

    /// The first `n` bytes of the buffer were taken; they held whole records.
    fn consumed(&mut self, n: usize) {
        // At the end of input the last block is taken unscanned; nothing follows it.
        self.scanned = self.scanned.saturating_sub(n);
        self.last_end = None;
    }
}

fn sniff<R: Read>(
    input: &mut BufReader<R>,
    schema: Option<SchemaRef>,
    delimiter: u8,
) -> Result<(Vec<u8>, SchemaRef, Format)> {
    let mut head = Vec::new();
    let mut eof = false;
    while head.len() < SNIFF_BYTES {
        let buf = input
            .fill_buf()
            .map_err(|e| Error::invalid(format!("failed to read the CSV body: {e}")))?;
        if buf.is_empty() {
            eof = true;
            break;
        }
        let take = buf.len().min(SNIFF_BYTES - head.len());
        head.extend_from_slice(&buf[..take]);
        input.consume(take);
    }
    if head.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "the CSV body is empty; expected a header row",
        ));
    }
    let format = Format::default()
        .with_header(true)
        .with_delimiter(delimiter);
    let schema = match schema {
        Some(s) => s,
        None => {
            // Infer from whole lines only.
            let cut = if eof {
                head.len()
            } else {
                head.iter()
                    .rposition(|b| *b == b'\n')
                    .map_or(head.len(), |p| p + 1)
            };
            let (s, _) = format
                .infer_schema(Cursor::new(&head[..cut]), Some(10_000))
                .map_err(|e| Error::invalid(format!("failed to infer the CSV schema: {e}")))?;
            Arc::new(s)
        }
    };
    if schema.fields().is_empty() {
        return Err(Error::invalid("the CSV header names no columns"));
    }
    Ok((head, schema, format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    /// Where blocks are cut when `text` arrives `step` bytes at a time and every complete
    /// record is taken as soon as it is seen.
    fn ends(text: &[u8], step: usize) -> Vec<usize> {
        let mut s = Splitter::new(b',');
        let mut out = Vec::new();
        let (mut buf, mut taken) = (Vec::new(), 0);
        for piece in text.chunks(step) {
            buf.extend_from_slice(piece);
            if let Some(e) = s.scan(&buf) {
                buf.drain(..e);
                s.consumed(e);
                taken += e;
                out.push(taken);
            }
        }
        out
    }

    #[test]
    fn splitter_follows_quoting_rules() {
        let text = b"a,\"x\ny\",1\nb,\"he said \"\"hi\n\"\"\",2\r\nc,5\"inch,3\n\"q\"\"\",d,4";
        // Whole, the last complete record ends at 44; fed a byte at a time, each end is seen.
        assert_eq!(ends(text, text.len()), vec![44]);
        let want = vec![10, 33, 44];
        // Scanning in small pieces, as the body arrives, finds the same ends.
        for step in [1, 2] {
            assert_eq!(ends(text, step), want, "step {step}");
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    fn run(body: &[u8], block: usize, workers: usize) -> (Vec<RecordBatch>, Option<String>) {
        let parser = BlockParser {
            schema: schema(),
            format: Format::default().with_header(false),
        };
        let (tx, mut rx) = mpsc::channel(1 << 16);
        let sizes = Sizes {
            block,
            max_record: 64 * 1024,
        };
        // The head holds the header and the first rows, as after sniffing.
        let (head, rest) = body.split_at(body.len().min(40));
        let result = parse_blocks(
            &mut Cursor::new(rest.to_vec()),
            head.to_vec(),
            b',',
            &parser,
            workers,
            sizes,
            &tx,
        );
        drop(tx);
        let mut batches = Vec::new();
        while let Ok(b) = rx.try_recv() {
            batches.push(b.unwrap());
        }
        (batches, result.err().map(|e| e.to_string()))
    }

    #[test]
    fn blocks_parsed_in_parallel_keep_rows_in_order() {
        let mut body = String::from("id,s\n");
        for i in 0..20_000 {
            if i % 3 == 0 {
                body.push_str(&format!("{i},\"multi\nline, \"\"{i}\"\"\"\n"));
            } else {
                body.push_str(&format!("{i},plain{i}\n"));
            }
        }
        body.push_str("20000,last without newline");
        for (block, workers) in [(64, 2), (1000, 3), (1 << 20, 2), (777, 1)] {
            let (batches, err) = run(body.as_bytes(), block, workers);
            assert_eq!(err, None);
            let ids: Vec<i64> = batches
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    a.values().to_vec()
                })
                .collect();
            assert_eq!(ids, (0..=20_000).collect::<Vec<i64>>(), "block {block}");
            let s = batches[0]
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            assert_eq!(s.value(0), "multi\nline, \"0\"");
            assert_eq!(s.value(1), "plain1");
            let last = batches.last().unwrap();
            let s = last
                .column(1)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap();
            assert_eq!(s.value(s.len() - 1), "last without newline");
        }
    }

    #[test]
    fn errors_name_the_line_of_the_body() {
        let mut body = String::from("id,s\n");
        for i in 0..5000 {
            body.push_str(&format!("{i},v{i}\n"));
        }
        body.push_str("oops,v\n1,v\n");
        let (_, err) = run(body.as_bytes(), 1000, 2);
        let err = err.unwrap();
        assert!(err.contains("'oops'"), "{err}");
        // The same number the whole-body reader reports for this row.
        let single = ReaderBuilder::new(schema())
            .with_header(true)
            .build(Cursor::new(body.clone()))
            .unwrap()
            .find_map(|b| b.err())
            .unwrap()
            .to_string();
        let line = |m: &str| {
            m.split("at line ")
                .nth(1)
                .unwrap()
                .split('.')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(line(&err), line(&single), "{err} vs {single}");
        assert_eq!(
            shift_line_numbers("for line 3, and line x at line 10.", 5),
            "for line 8, and line x at line 15."
        );
    }

    #[test]
    fn an_open_quote_is_refused_not_buffered_without_end() {
        let mut body = String::from("id,s\n1,\"never closed\n");
        body.push_str(&"x,y\n".repeat(50_000));
        let (_, err) = run(body.as_bytes(), 1000, 2);
        assert!(err.unwrap().contains("is a quote left open"));
    }

    #[test]
    fn a_header_without_rows_gives_no_batches() {
        let (batches, err) = run(b"id,s\n", 1000, 2);
        assert!(batches.is_empty() && err.is_none());
        let (batches, err) = run(b"id,s", 1000, 2);
        assert!(batches.is_empty() && err.is_none());
    }
}
