//! Consumers of a version: declared by its upload, released one by one; once every
//! consumer has released, the version is deleted after `--release-grace`.
//!
//! An upload names its consumers (`x-flight-consumers: scorer,reporter`) or counts them
//! (`x-flight-consumers: 2`). The declaration and every release live in the version's
//! record, changed by compare-and-swap ([`crate::versions::Versions::release`]): releases
//! through any node of a pool, before or after a restart, count the same, and concurrent
//! releases never lose one. Reading does not release: a consumer that crashes after reading
//! can read again until it releases, and a consumer that never comes leaves the version to
//! its TTL.
//!
//! The release that completes the set records `doneAt` and brings the version's expiry
//! forward to `doneAt + --release-grace`, so the version ends then on every node even if the
//! node that saw the last release stops; that node also deletes it then, once no read of it
//! is in flight there.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::name::validate_label;

/// Most consumers one version may declare.
pub const MAX_CONSUMERS: u32 = 1000;

/// The consumers of a version and their releases, as stored in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consumers {
    /// Named consumers (DNS-1123 labels); empty when they are only counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Releases that complete the version: the number of names, or the declared count.
    pub count: u32,
    /// Consumers that released, in order (named versions, and counted releases that gave
    /// a name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
    /// Releases so far.
    pub releases: u32,
    /// When the last consumer released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<DateTime<Utc>>,
}

/// What a client is told about a version's consumers (PutResult, FlightInfo, `release`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumersView {
    /// Named consumers that have not released (named versions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Vec<String>>,
    /// Named consumers that have released (named versions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<Vec<String>>,
    pub count: u32,
    pub releases: u32,
    /// When the last consumer released (the version ends `--release-grace` later; see
    /// `expiresAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_released_at: Option<DateTime<Utc>>,
}

/// A declaration in JSON (the `load` action) or YAML: a count, a list of names, or the
/// header's text form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConsumersSpec {
    Count(u32),
    Names(Vec<String>),
    Text(String),
}

impl ConsumersSpec {
    pub fn to_consumers(&self) -> Result<Consumers> {
        match self {
            ConsumersSpec::Count(n) => Consumers::counted(*n),
            ConsumersSpec::Names(names) => Consumers::named(names.clone()),
            ConsumersSpec::Text(t) => Consumers::parse(t),
        }
    }
}

impl Consumers {
    /// Parses a declaration: a count (`2`) or comma-separated names (`scorer,reporter`).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bad = |why: String| {
            Error::invalid(format!(
                "invalid consumers {text:?}: {why}; give a count (`2`) or names (`scorer,reporter`)"
            ))
        };
        if text.is_empty() {
            return Err(bad("empty".into()));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            let count: u32 = text.parse().map_err(|_| bad("too large".into()))?;
            return Self::counted(count);
        }
        let names: Vec<String> = text.split(',').map(|n| n.trim().to_string()).collect();
        Self::named(names)
    }

    /// `count` anonymous consumers.
    pub fn counted(count: u32) -> Result<Self> {
        if count == 0 || count > MAX_CONSUMERS {
            return Err(Error::invalid(format!(
                "a version has 1 to {MAX_CONSUMERS} consumers, not {count}"
            )));
        }
        Ok(Self {
            names: Vec::new(),
            count,
            released: Vec::new(),
            releases: 0,
            done_at: None,
        })
    }

    /// Named consumers.
    pub fn named(names: Vec<String>) -> Result<Self> {
        if names.is_empty() || names.len() > MAX_CONSUMERS as usize {
            return Err(Error::invalid(format!(
                "a version has 1 to {MAX_CONSUMERS} consumers, not {}",
                names.len()
            )));
        }
        for (i, n) in names.iter().enumerate() {
            validate_label("consumer", n)?;
            if names[..i].contains(n) {
                return Err(Error::invalid(format!("consumer {n:?} is named twice")));
            }
        }
        Ok(Self {
            count: names.len() as u32,
            names,
            released: Vec::new(),
            releases: 0,
            done_at: None,
        })
    }

    pub fn is_done(&self) -> bool {
        self.releases >= self.count
    }

    /// Named consumers that have not released.
    pub fn pending(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !self.released.contains(n))
            .cloned()
            .collect()
    }

    /// Records a release. `Ok(true)` when it changed the record, `Ok(false)` for a release
    /// already counted (a repeated release is idempotent).
    pub fn release(&mut self, consumer: Option<&str>, now: DateTime<Utc>) -> Result<bool> {
        if !self.names.is_empty() {
            let Some(c) = consumer else {
                return Err(Error::invalid(format!(
                    "this version has named consumers ({}); say which one releases",
                    self.names.join(", ")
                )));
            };
            if !self.names.iter().any(|n| n == c) {
                return Err(Error::invalid(format!(
                    "{c:?} is not a consumer of this version; its consumers are {}",
                    self.names.join(", ")
                )));
            }
            if self.released.iter().any(|n| n == c) {
                return Ok(false);
            }
            self.released.push(c.to_string());
        } else {
            // Counted: a name, when given, makes a repeated release by it count once.
            if let Some(c) = consumer {
                validate_label("consumer", c)?;
                if self.released.iter().any(|n| n == c) {
                    return Ok(false);
                }
            }
            if self.is_done() {
                return Ok(false);
            }
            if let Some(c) = consumer {
                self.released.push(c.to_string());
            }
        }
        self.releases += 1;
        if self.is_done() && self.done_at.is_none() {
            self.done_at = Some(now);
        }
        Ok(true)
    }

    /// What clients are told.
    pub fn view(&self) -> ConsumersView {
        let named = !self.names.is_empty();
        ConsumersView {
            pending: named.then(|| self.pending()),
            released: named.then(|| self.released.clone()),
            count: self.count,
            releases: self.releases,
            all_released_at: self.done_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_parse_and_bad_ones_are_refused() {
        let c = Consumers::parse("scorer, reporter").unwrap();
        assert_eq!((c.names.len(), c.count), (2, 2));
        assert_eq!(Consumers::parse("3").unwrap().count, 3);
        for bad in ["", "0", "1001", "a,,b", "Scorer", "a,a", "99999999999"] {
            let e = Consumers::parse(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
    }

    #[test]
    fn named_releases_are_checked_and_idempotent() {
        let now = Utc::now();
        let mut c = Consumers::parse("scorer,reporter").unwrap();
        assert!(c
            .release(None, now)
            .unwrap_err()
            .to_string()
            .contains("scorer, reporter"));
        let e = c.release(Some("stranger"), now).unwrap_err();
        assert!(
            e.to_string().contains("its consumers are scorer, reporter"),
            "{e}"
        );
        assert!(c.release(Some("scorer"), now).unwrap());
        assert!(!c.release(Some("scorer"), now).unwrap());
        assert_eq!(c.pending(), vec!["reporter"]);
        assert!(!c.is_done() && c.done_at.is_none());
        assert!(c.release(Some("reporter"), now).unwrap());
        assert!(c.is_done() && c.done_at == Some(now));
        let v = c.view();
        assert_eq!(v.pending, Some(vec![]));
        assert_eq!(v.all_released_at, Some(now));
    }

    #[test]
    fn counted_releases_count_once_per_name_and_stop_at_the_count() {
        let now = Utc::now();
        let mut c = Consumers::parse("2").unwrap();
        assert!(c.release(Some("a"), now).unwrap());
        assert!(!c.release(Some("a"), now).unwrap());
        assert!(c.release(None, now).unwrap());
        assert!(c.is_done());
        assert!(!c.release(None, now).unwrap());
        assert_eq!(c.releases, 2);
    }
}
