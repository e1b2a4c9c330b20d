//! Tickets: the small strings atoms pass downstream instead of data.
//!
//! # Wire format
//!
//! A ticket is UTF-8 text:
//!
//! ```text
//! ads1:<namespace>/<name>@<version>[#<part>][?<selection>][~<signature>]
//! ```
//!
//! * `ads1` is the format tag; anything else is refused with `InvalidArgument`.
//! * `<namespace>` and `<name>` are DNS-1123 labels, `<version>` a positive integer. A
//!   ticket pins one immutable version, so a downstream step reads exactly what was passed.
//! * `#<part>` (optional, zero-based) selects one Parquet part of the version. The node
//!   issues such tickets in the endpoints of `GetFlightInfo` so clients can fetch parts in
//!   parallel; the ticket returned by an upload never carries it.
//! * `?<selection>` (optional) narrows what a read returns: `columns=<c1>,<c2>,...` (the
//!   columns, in the order wanted) and/or `limit=<rows>` (the first rows only), joined by
//!   `&`, e.g. `?columns=id,price&limit=1000`. Column names are percent-encoded: every
//!   byte but `A-Z a-z 0-9 - . _` is written `%XX`. The node writes `columns` before
//!   `limit`; each key appears at most once, and a column at most once.
//! * `~<signature>` is present when the node runs with a ticket signing key: the unpadded
//!   base64url HMAC-SHA256 of everything before the `~`. A node with a key refuses unsigned
//!   or wrongly signed tickets; a node without a key refuses signed ones (it cannot check
//!   them).
//!
//! Unknown datasets or versions are `NotFound`; everything malformed is `InvalidArgument`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::name::DatasetId;

/// Format tag at the start of every ticket.
pub const PREFIX: &str = "ads1:";
/// Tickets longer than this are refused before any parsing (a selection of many long
/// column names needs room).
pub const MAX_TICKET_LEN: usize = 8192;

/// Bytes of a column name kept as they are in a ticket; everything else is `%XX`.
const COLUMN_NAME: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// What a read returns of a version: some columns, the first rows, or all of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selection {
    /// The columns, in the order wanted; `None` is every column.
    pub columns: Option<Vec<String>>,
    /// At most this many rows (the first ones); `None` is every row.
    pub limit: Option<u64>,
}

impl Selection {
    /// Everything: no column chosen, no limit.
    pub fn is_all(&self) -> bool {
        self.columns.is_none() && self.limit.is_none()
    }

    /// A selection after checking it: columns named once each, at least one.
    pub fn new(columns: Option<Vec<String>>, limit: Option<u64>) -> Result<Self> {
        if let Some(cols) = &columns {
            if cols.is_empty() {
                return Err(Error::invalid(
                    "a column selection names at least one column",
                ));
            }
            let mut seen = std::collections::HashSet::new();
            if let Some(dup) = cols.iter().find(|c| !seen.insert(c.as_str())) {
                return Err(Error::invalid(format!("column {dup:?} is selected twice")));
            }
        }
        Ok(Self { columns, limit })
    }

    /// This selection narrowed by `more`: its columns must be among ours (a ticket's
    /// selection is never widened), and the smaller limit wins.
    pub fn narrow(&self, more: &Selection) -> Result<Selection> {
        let columns = match (&self.columns, &more.columns) {
            (Some(ours), Some(theirs)) => {
                if let Some(c) = theirs.iter().find(|c| !ours.contains(c)) {
                    return Err(Error::invalid(format!(
                        "column {c:?} is not among the ticket's columns {ours:?}"
                    )));
                }
                Some(theirs.clone())
            }
            (ours, theirs) => theirs.clone().or_else(|| ours.clone()),
        };
        let limit = match (self.limit, more.limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Selection::new(columns, limit)
    }

    fn parse(query: &str) -> Result<Self> {
        let mut columns = None;
        let mut limit = None;
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                Error::invalid(format!(
                    "ticket selection {pair:?} is not key=value (columns=..., limit=...)"
                ))
            })?;
            match key {
                "columns" if columns.is_none() => {
                    let names = value
                        .split(',')
                        .map(|c| {
                            if c.is_empty() {
                                return Err(Error::invalid("an empty column name in a ticket"));
                            }
                            percent_decode_str(c)
                                .decode_utf8()
                                .map(|c| c.into_owned())
                                .map_err(|_| Error::invalid("a ticket's column name is not UTF-8"))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    columns = Some(names);
                }
                "limit" if limit.is_none() => {
                    limit = Some(parse_number::<u64>(value).ok_or_else(|| {
                        Error::invalid(format!("ticket limit {value:?} is not a row count"))
                    })?);
                }
                "columns" | "limit" => {
                    return Err(Error::invalid(format!(
                        "{key} appears twice in the ticket's selection"
                    )))
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unknown ticket selection {other:?}; use columns=... and limit=..."
                    )))
                }
            }
        }
        Selection::new(columns, limit)
    }
}

impl fmt::Display for Selection {
    /// The query form, without the `?`; empty for everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(cols) = &self.columns {
            f.write_str("columns=")?;
            for (i, c) in cols.iter().enumerate() {
                if i > 0 {
                    f.write_str(",")?;
                }
                write!(f, "{}", utf8_percent_encode(c, COLUMN_NAME))?;
            }
            sep = "&";
        }
        if let Some(limit) = self.limit {
            write!(f, "{sep}limit={limit}")?;
        }
        Ok(())
    }
}

/// A parsed ticket: one version of one dataset, optionally one part of it, optionally
/// narrowed to some columns or rows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub dataset: DatasetId,
    pub version: u64,
    pub part: Option<u32>,
    pub select: Selection,
}

impl Ticket {
    pub fn new(dataset: DatasetId, version: u64) -> Self {
        Self {
            dataset,
            version,
            part: None,
            select: Selection::default(),
        }
    }

    /// The same ticket reading only what `select` says.
    pub fn with_selection(&self, select: Selection) -> Self {
        Self {
            select,
            ..self.clone()
        }
    }

    /// The same version restricted to one part.
    pub fn with_part(&self, part: u32) -> Self {
        Self {
            part: Some(part),
            ..self.clone()
        }
    }

    /// Encodes the ticket, signing it when a key is given.
    pub fn encode(&self, signer: Option<&TicketSigner>) -> String {
        let body = self.to_string();
        match signer {
            Some(s) => format!("{body}~{}", s.sign(&body)),
            None => body,
        }
    }

    /// Parses (and, with a signer, verifies) ticket bytes as received from a client.
    pub fn decode(bytes: &[u8], signer: Option<&TicketSigner>) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::invalid("empty ticket"));
        }
        if bytes.len() > MAX_TICKET_LEN {
            return Err(Error::invalid(format!(
                "ticket is {} bytes; tickets are at most {MAX_TICKET_LEN}",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| {
            Error::invalid("ticket is not UTF-8; expected ads1:<namespace>/<name>@<version>")
        })?;
        let (body, signature) = match text.split_once('~') {
            Some((body, sig)) => (body, Some(sig)),
            None => (text, None),
        };
        match (signer, signature) {
            (Some(s), Some(sig)) => s.verify(body, sig)?,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "ticket is not signed; this node requires signed tickets",
                ))
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "ticket is signed but this node has no signing key to verify it",
                ))
            }
            (None, None) => {}
        }
        Self::parse_body(body)
    }

    fn parse_body(body: &str) -> Result<Self> {
        let malformed = || {
            Error::invalid(format!(
                "malformed ticket {body:?}: expected ads1:<namespace>/<name>@<version>"
            ))
        };
        let rest = body.strip_prefix(PREFIX).ok_or_else(malformed)?;
        let (rest, select) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Selection::parse(query)?),
            None => (rest, Selection::default()),
        };
        let (rest, part) = match rest.split_once('#') {
            Some((rest, part)) => (rest, Some(parse_number::<u32>(part).ok_or_else(malformed)?)),
            None => (rest, None),
        };
        let (path, version) = rest.split_once('@').ok_or_else(malformed)?;
        let version = parse_number::<u64>(version)
            .filter(|v| *v > 0)
            .ok_or_else(malformed)?;
        let (namespace, name) = path.split_once('/').ok_or_else(malformed)?;
        let dataset = DatasetId::new(namespace, name)?;
        Ok(Self {
            dataset,
            version,
            part,
            select,
        })
    }
}

/// Digits only: no sign, no spaces, no leading `+`.
fn parse_number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for Ticket {
    /// The unsigned wire form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}/{}@{}",
            self.dataset.namespace(),
            self.dataset.name(),
            self.version
        )?;
        if let Some(part) = self.part {
            write!(f, "#{part}")?;
        }
        if !self.select.is_all() {
            write!(f, "?{}", self.select)?;
        }
        Ok(())
    }
}

/// Signs and verifies tickets with HMAC-SHA256.
#[derive(Clone)]
pub struct TicketSigner {
    key: Vec<u8>,
}

impl fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketSigner(..)")
    }
}

impl TicketSigner {
    /// A signer with the given secret key (at least 16 bytes).
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Self> {
        let key = key.into();
        if key.len() < 16 {
            return Err(Error::Config(
                "the ticket signing key must be at least 16 bytes".into(),
            ));
        }
        Ok(Self { key })
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; the error branch cannot be reached.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!())
    }

    fn sign(&self, body: &str) -> String {
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    fn verify(&self, body: &str, signature: &str) -> Result<()> {
        let sig = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| Error::invalid("ticket signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig)
            .map_err(|_| Error::invalid("ticket signature does not verify"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DatasetId {
        DatasetId::new("analytics", "sales").unwrap()
    }

    #[test]
    fn round_trip() {
        let t = Ticket::new(id(), 3);
        assert_eq!(t.encode(None), "ads1:analytics/sales@3");
        assert_eq!(Ticket::decode(b"ads1:analytics/sales@3", None).unwrap(), t);
        let p = t.with_part(2);
        assert_eq!(p.encode(None), "ads1:analytics/sales@3#2");
        assert_eq!(Ticket::decode(p.encode(None).as_bytes(), None).unwrap(), p);
    }

    #[test]
    fn rejects_malformed() {
        let long = format!("ads1:a/b@1?limit={}", "1".repeat(MAX_TICKET_LEN));
        let cases: Vec<&[u8]> = vec![
            b"",
            b"ads1",
            b"ads2:a/b@1",
            b"ads1:a/b",
            b"ads1:a/b@",
            b"ads1:a/b@0",
            b"ads1:a/b@-1",
            b"ads1:a/b@+1",
            b"ads1:a/b@1x",
            b"ads1:a/b@99999999999999999999999",
            b"ads1:b@1",
            b"ads1:../etc@1",
            b"ads1:a/../b@1",
            b"ads1:A/b@1",
            b"ads1:a/b@1#",
            b"ads1:a/b@1#x",
            b"ads1:a/b@1?",
            b"ads1:a/b@1?limit",
            b"ads1:a/b@1?limit=-1",
            b"ads1:a/b@1?limit=1&limit=2",
            b"ads1:a/b@1?columns=",
            b"ads1:a/b@1?columns=a,,b",
            b"ads1:a/b@1?columns=a,a",
            b"ads1:a/b@1?columns=%ff",
            b"ads1:a/b@1?rows=3",
            b"\xff\xfe",
            long.as_bytes(),
        ];
        for bad in cases {
            let err = Ticket::decode(bad, None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn selections_round_trip_with_any_column_name() {
        let names = vec!["price".to_string(), "a b,c~d#e?f&g=h%i/é".to_string()];
        let sel = Selection::new(Some(names.clone()), Some(1000)).unwrap();
        let t = Ticket::new(id(), 3)
            .with_part(1)
            .with_selection(sel.clone());
        let text = t.encode(None);
        assert_eq!(
            text,
            "ads1:analytics/sales@3#1?columns=price,a%20b%2Cc%7Ed%23e%3Ff%26g%3Dh%25i%2F%C3%A9&limit=1000"
        );
        let back = Ticket::decode(text.as_bytes(), None).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.select.columns, Some(names));
        // Keys in either order; only a limit; only columns.
        let t2 = Ticket::decode(b"ads1:analytics/sales@3?limit=5&columns=x", None).unwrap();
        assert_eq!(t2.select.limit, Some(5));
        assert_eq!(t2.select.columns, Some(vec!["x".to_string()]));
        assert_eq!(t2.encode(None), "ads1:analytics/sales@3?columns=x&limit=5");
    }

    #[test]
    fn narrowing_never_widens() {
        let ab = Selection::new(Some(vec!["a".into(), "b".into()]), Some(10)).unwrap();
        let b = Selection::new(Some(vec!["b".into()]), Some(50)).unwrap();
        let n = ab.narrow(&b).unwrap();
        assert_eq!(n.columns, Some(vec!["b".to_string()]));
        assert_eq!(n.limit, Some(10));
        let c = Selection::new(Some(vec!["c".into()]), None).unwrap();
        assert_eq!(
            ab.narrow(&c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(Selection::default().narrow(&c).unwrap(), c);
        assert_eq!(ab.narrow(&Selection::default()).unwrap(), ab);
    }

    #[test]
    fn signing() {
        let signer = TicketSigner::new(b"0123456789abcdef0123".to_vec()).unwrap();
        let t = Ticket::new(id(), 7);
        let signed = t.encode(Some(&signer));
        assert!(signed.starts_with("ads1:analytics/sales@7~"));
        assert_eq!(Ticket::decode(signed.as_bytes(), Some(&signer)).unwrap(), t);

        // Unsigned, tampered, or signed with another key: refused.
        assert!(Ticket::decode(b"ads1:analytics/sales@7", Some(&signer)).is_err());
        let tampered = signed.replace("@7", "@8");
        assert!(Ticket::decode(tampered.as_bytes(), Some(&signer)).is_err());
        let other = TicketSigner::new(b"another-key-of-16b".to_vec()).unwrap();
        assert!(Ticket::decode(signed.as_bytes(), Some(&other)).is_err());
        // The signature covers the selection: it cannot be added, changed or dropped.
        let sel = Selection::new(Some(vec!["a".into()]), Some(3)).unwrap();
        let narrowed = t.with_selection(sel).encode(Some(&signer));
        assert!(Ticket::decode(narrowed.as_bytes(), Some(&signer)).is_ok());
        let (body, sig) = signed.split_once('~').unwrap();
        let added = format!("{body}?limit=3~{sig}");
        assert!(Ticket::decode(added.as_bytes(), Some(&signer)).is_err());
        let changed = narrowed.replace("limit=3", "limit=4");
        assert!(Ticket::decode(changed.as_bytes(), Some(&signer)).is_err());
        // A node without a key cannot check a signature.
        assert!(Ticket::decode(signed.as_bytes(), None).is_err());
        assert!(TicketSigner::new(b"short".to_vec()).is_err());
    }
}
