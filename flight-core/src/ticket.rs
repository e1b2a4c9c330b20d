//! Tickets: the small strings atoms pass downstream instead of data.
//!
//! # Wire format
//!
//! A ticket is UTF-8 text:
//!
//! ```text
//! ads1:<namespace>/<name>@<version>[#<part>][~<signature>]
//! ```
//!
//! * `ads1` is the format tag; anything else is refused with `InvalidArgument`.
//! * `<namespace>` and `<name>` are DNS-1123 labels, `<version>` a positive integer. A
//!   ticket pins one immutable version, so a downstream step reads exactly what was passed.
//! * `#<part>` (optional, zero-based) selects one Parquet part of the version. The node
//!   issues such tickets in the endpoints of `GetFlightInfo` so clients can fetch parts in
//!   parallel; the ticket returned by an upload never carries it.
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
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::name::DatasetId;

/// Format tag at the start of every ticket.
pub const PREFIX: &str = "ads1:";
/// Tickets longer than this are refused before any parsing.
pub const MAX_TICKET_LEN: usize = 512;

/// A parsed ticket: one version of one dataset, optionally one part of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ticket {
    pub dataset: DatasetId,
    pub version: u64,
    pub part: Option<u32>,
}

impl Ticket {
    pub fn new(dataset: DatasetId, version: u64) -> Self {
        Self {
            dataset,
            version,
            part: None,
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
        let long = format!("ads1:a/b@{}", "1".repeat(600));
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
            b"\xff\xfe",
            long.as_bytes(),
        ];
        for bad in cases {
            let err = Ticket::decode(bad, None).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
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
        // A node without a key cannot check a signature.
        assert!(Ticket::decode(signed.as_bytes(), None).is_err());
        assert!(TicketSigner::new(b"short".to_vec()).is_err());
    }
}
