//! Streaming CSV to Arrow, for the HTTP upload and the `load` action.
//!
//! Runs on a blocking thread: bytes arrive from an async body through a bridge and are cut
//! into blocks at record boundaries (quote-aware, so a quoted field may hold newlines);
//! blocks are parsed in parallel by one thread per core, each keeping its decoder, while the
//! next block is read, and their batches leave in input order through a bounded channel.
//! Block buffers go back and forth between the reader and the parsers. Memory holds a few
//! blocks of text and a few batches, whatever the size of the body.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::csv::reader::{Decoder, Format};
use arrow::csv::ReaderBuilder;
use arrow::datatypes::SchemaRef;
use arrow::error::{ArrowError, Result as ArrowResult};
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

/// Builds the decoders that parse blocks of whole records.
struct BlockParser {
    schema: SchemaRef,
    format: Format,
}

impl BlockParser {
    /// One parser thread: takes blocks, returns their batches and the block's buffer.
    /// Its decoder lives as long as the thread, so the decoder's record buffers are
    /// allocated once per upload, not once per block.
    fn work(&self, jobs: Receiver<Job>, done: SyncSender<Done>) {
        let mut decoder = ReaderBuilder::new(self.schema.clone())
            .with_format(self.format.clone())
            .with_batch_size(BATCH_ROWS)
            .build_decoder();
        let mut rows = 0usize;
        for Job { block, last } in jobs {
            let parsed = match decode_block(&mut decoder, &block, last) {
                Ok(batches) => {
                    rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                    Ok(batches)
                }
                // The decoder counts lines over all of its blocks.
                Err(e) => Err(BlockError {
                    message: e.to_string(),
                    rows_before: rows,
                }),
            };
            let failed = parsed.is_err();
            if done.send(Done { parsed, block }).is_err() || failed {
                return;
            }
        }
    }
}

/// Decodes one block of whole records; `last` ends the input (a final record may lack its
/// line end).
fn decode_block(
    decoder: &mut Decoder,
    mut text: &[u8],
    last: bool,
) -> ArrowResult<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    loop {
        let used = decoder.decode(text)?;
        text = &text[used..];
        if decoder.capacity() == 0 {
            batches.extend(decoder.flush()?);
        } else if text.is_empty() {
            break;
        } else if used == 0 {
            return Err(ArrowError::CsvError(
                "the CSV decoder made no progress".into(),
            ));
        }
    }
    if last {
        decoder.decode(&[])?;
    }
    batches.extend(decoder.flush()?);
    Ok(batches)
}

/// A block for a parser thread.
struct Job {
    block: Vec<u8>,
    last: bool,
}

/// A parsed block, with its buffer back for the next block.
struct Done {
    parsed: std::result::Result<Vec<RecordBatch>, BlockError>,
    block: Vec<u8>,
}

/// A parse error, with the rows the failing thread had parsed before the block (its line
/// numbers count from its first block).
struct BlockError {
    message: String,
    rows_before: usize,
}

/// The sending side of a parser thread.
struct Lane {
    jobs: SyncSender<Job>,
    done: Receiver<Done>,
}

/// Reads the body block by block after the header record, parses up to `workers` blocks
/// at once (while the next is read) and sends their batches in order. Returns the first
/// error; stops quietly when the receiver is gone (the upload was abandoned).
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
    let workers = workers.max(1);
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (jobs, job_rx) = sync_channel(1);
            let (done_tx, done) = sync_channel(1);
            std::thread::Builder::new()
                .name("csv-parse".into())
                .spawn_scoped(scope, move || parser.work(job_rx, done_tx))
                .map_err(|e| Error::Internal(format!("failed to start a CSV parser: {e}")))?;
            lanes.push(Lane { jobs, done });
        }
        // Blocks go to the lanes in turn, so results are collected in the same turn.
        let mut pending: VecDeque<usize> = VecDeque::new();
        let mut out = Forwarder {
            tx,
            rows_before: 0,
            free: Vec::new(),
        };
        let mut next = 0usize;
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
                let lane = next % workers;
                next += 1;
                if pending.len() == workers {
                    if let Some(front) = pending.pop_front() {
                        if !out.forward(&lanes[front])? {
                            return Ok(());
                        }
                    }
                }
                // The rest moves to a buffer a parser gave back; the block keeps its own.
                let mut rest = out.free.pop().unwrap_or_default();
                rest.clear();
                rest.extend_from_slice(&buf[end..]);
                buf.truncate(end);
                let block = std::mem::replace(&mut buf, rest);
                splitter.consumed(end);
                let job = Job { block, last: eof };
                lanes[lane]
                    .jobs
                    .send(job)
                    .map_err(|_| Error::Internal("a CSV parser thread stopped".into()))?;
                pending.push_back(lane);
            }
            if eof && buf.is_empty() {
                while let Some(front) = pending.pop_front() {
                    if !out.forward(&lanes[front])? {
                        return Ok(());
                    }
                }
                return Ok(());
            }
        }
    })
}

/// Sends parsed batches on in input order and keeps the buffers parsers gave back.
struct Forwarder<'a> {
    tx: &'a mpsc::Sender<Result<RecordBatch>>,
    rows_before: usize,
    free: Vec<Vec<u8>>,
}

impl Forwarder<'_> {
    /// Waits for a lane's block and sends its batches on; false when the receiver is gone.
    fn forward(&mut self, lane: &Lane) -> Result<bool> {
        let Done { parsed, block } = lane
            .done
            .recv()
            .map_err(|_| Error::Internal("a CSV parser thread stopped".into()))?;
        self.free.push(block);
        let batches = parsed.map_err(|e| {
            // Line numbers count from the parser's first block; make them count from the
            // body (whose first line is the header).
            let shift = |n: usize| n - e.rows_before.min(n) + self.rows_before + 1;
            Error::invalid(format!(
                "failed to parse CSV: {}",
                renumber_lines(&e.message, shift)
            ))
        })?;
        for batch in batches {
            self.rows_before += batch.num_rows();
            if self.tx.blocking_send(Ok(batch)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
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
        "no CSV record ends within {} MiB: is a quote left open?",
        max >> 20
    ))
}

/// Maps every number that follows the word `line` in an error message.
fn renumber_lines(msg: &str, map: impl Fn(usize) -> usize) -> String {
    let mut out = String::with_capacity(msg.len() + 8);
    let mut rest = msg;
    while let Some(at) = rest.find("line ") {
        let (before, after) = rest.split_at(at + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&map(n).to_string()),
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
                // A record ends at `\n`, `\r\n` or a bare `\r`, as in arrow's reader. A cut
                // between the two bytes of `\r\n` leaves an empty line, which it skips.
                Field::Unquoted => match memchr::memchr3(b'\n', b'\r', QUOTE, &buf[i..]) {
                    None => i = buf.len(),
                    Some(k) => {
                        let at = i + k;
                        i = at + 1;
                        if buf[at] == b'\r' && buf.get(i) == Some(&b'\n') {
                            // The `\n` ends the record.
                        } else if buf[at] != QUOTE {
                            self.last_end = Some(i);
                            if first {
                                break;
                            }
                        } else if at == 0
                            || matches!(buf[at - 1], b'\n' | b'\r')
                            || buf[at - 1] == self.delimiter
                        {
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
    // Empty lines before the header are skipped, as arrow's reader skips every empty line.
    let blank = head
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    head.drain(..blank);
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
                .infer_schema(std::io::Cursor::new(&head[..cut]), Some(10_000))
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
    use std::io::Cursor;

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
        // Scanning in small pieces, as the body arrives, finds the same ends, and may cut
        // between the bytes of the `\r\n` at 31 (leaving an empty line, which is skipped).
        for step in [1, 2] {
            let mut got = ends(text, step);
            got.retain(|&e| e != 32);
            assert_eq!(got, want, "step {step}");
        }
        // A bare carriage return ends a record; a quoted one does not.
        assert_eq!(ends(b"a,1\rb,\"x\ry\"\rc", 100), vec![12]);
        assert_eq!(ends(b"a,1\rb,\"x\ry\"\rc", 1), vec![4, 12]);
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
        let line = |m: &str| {
            m.split("line ")
                .nth(1)
                .unwrap()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .to_string()
        };
        // A value that does not parse, and a record with a field too many, each after
        // many blocks, so each parser thread has decoded several blocks before.
        for bad in ["oops,v", "7,v,extra"] {
            let mut body = String::from("id,s\n");
            for i in 0..5000 {
                body.push_str(&format!("{i},v{i}\n"));
            }
            body.push_str(&format!("{bad}\n1,v\n"));
            let (_, err) = run(body.as_bytes(), 1000, 2);
            let err = err.unwrap();
            assert!(
                err.contains("'oops'") || err.contains("expected 2"),
                "{err}"
            );
            // The same number the whole-body reader reports for this row.
            let single = ReaderBuilder::new(schema())
                .with_header(true)
                .build(Cursor::new(body.clone()))
                .unwrap()
                .find_map(|b| b.err())
                .unwrap()
                .to_string();
            assert_eq!(line(&err), line(&single), "{err} vs {single}");
        }
        assert_eq!(
            renumber_lines("for line 3, and line x at line 10.", |n| n + 5),
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

    /// Rows `parse` reads from `body` (schema inferred), or its error.
    fn parse_body(body: &[u8]) -> std::result::Result<Vec<RecordBatch>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (schema_tx, schema_rx) = oneshot::channel();
        let (tx, mut rx) = mpsc::channel(1 << 10);
        let reader = Cursor::new(body.to_vec());
        let parsed = std::thread::scope(|scope| {
            let handle = rt.handle().clone();
            let worker = scope.spawn(move || {
                let _runtime = handle.enter();
                parse(reader, None, b',', schema_tx, tx)
            });
            let schema = rt.block_on(schema_rx).unwrap();
            let mut batches = Vec::new();
            while let Some(b) = rx.blocking_recv() {
                batches.push(b.map_err(|e| e.to_string())?);
            }
            worker.join().unwrap().map_err(|e| e.to_string())?;
            schema.map_err(|e| e.to_string())?;
            Ok::<_, String>(batches)
        });
        parsed
    }

    /// What arrow's reader makes of the whole body (schema inferred the same way).
    fn arrow_rows(body: &[u8]) -> Vec<RecordBatch> {
        let format = Format::default().with_header(true);
        let (schema, _) = format
            .infer_schema(Cursor::new(body), Some(10_000))
            .unwrap();
        ReaderBuilder::new(Arc::new(schema))
            .with_format(format)
            .build(Cursor::new(body))
            .unwrap()
            .collect::<ArrowResult<Vec<_>>>()
            .unwrap()
    }

    fn same_rows(a: &[RecordBatch], b: &[RecordBatch]) -> bool {
        let (Some(first_a), Some(first_b)) = (a.first(), b.first()) else {
            return a.iter().chain(b).all(|x| x.num_rows() == 0);
        };
        let a = arrow::compute::concat_batches(&first_a.schema(), a).unwrap();
        let b = arrow::compute::concat_batches(&first_b.schema(), b).unwrap();
        a == b
    }

    #[test]
    fn empty_lines_before_the_header_are_skipped() {
        for body in [
            &b"\nid,s\n1,a\n"[..],
            b"\r\n\r\nid,s\n1,a\n2,b",
            b"\n\n\nid,s\r\n3,c\r\n",
        ] {
            let ours = parse_body(body).unwrap();
            assert!(same_rows(&ours, &arrow_rows(body)), "{body:?}: {ours:?}");
            assert_eq!(ours[0].schema().field(0).name(), "id");
        }
    }

    #[test]
    fn a_bare_carriage_return_ends_a_record_as_in_arrow() {
        // Old Mac line ends, mixed line ends, and a quoted field holding a bare CR.
        let bodies: [&[u8]; 3] = [
            b"id,s\r1,a\r2,b\r",
            b"id,s\r1,a\n2,b\r\n3,c\r4,d",
            b"id,s\r1,\"x\ry\"\r2,\"q\"\r",
        ];
        for body in bodies {
            let ours = parse_body(body).unwrap();
            assert!(same_rows(&ours, &arrow_rows(body)), "{body:?}: {ours:?}");
        }
        // Cut anywhere, in particular between the two bytes of a CRLF, the rows are those
        // of the whole body.
        let mut body = String::from("id,s\r");
        for i in 0..3000 {
            let end = ["\r", "\n", "\r\n"][i % 3];
            body.push_str(&format!("{i},\"v\r{i}\"{end}"));
        }
        let want = arrow_rows(body.as_bytes());
        for (block, workers) in [(64, 2), (333, 3), (1000, 1)] {
            let (got, err) = run(body.as_bytes(), block, workers);
            assert_eq!(err, None);
            let ids: Vec<i64> = got
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                    a.values().to_vec()
                })
                .collect();
            assert_eq!(ids, (0..3000).collect::<Vec<i64>>(), "block {block}");
            let s: Vec<String> = got
                .iter()
                .flat_map(|b| {
                    let a = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                    a.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
                })
                .collect();
            let w: Vec<String> = want
                .iter()
                .flat_map(|b| {
                    let a = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                    a.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
                })
                .collect();
            assert_eq!(s, w, "block {block}");
        }
    }
}
