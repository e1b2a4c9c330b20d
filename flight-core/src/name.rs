//! Dataset identity: `(namespace, name)`, both DNS-1123 labels.
//!
//! Validation here is also the path-traversal defence: a validated label can never contain
//! `/`, `.` or `..`, so it is safe to join into object-store paths.

use std::fmt;

use crate::error::{Error, Result};

/// Namespace used when a descriptor path has one element or no namespace is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A validated `(namespace, name)` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DatasetId {
    namespace: String,
    name: String,
}

impl DatasetId {
    /// Validates both parts as DNS-1123 labels.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let namespace = namespace.into();
        let name = name.into();
        validate_label("namespace", &namespace)?;
        validate_label("dataset name", &name)?;
        Ok(Self { namespace, name })
    }

    /// Builds an id from a Flight descriptor path: `[name]` (namespace `default`) or
    /// `[namespace, name]`.
    pub fn from_path(path: &[String]) -> Result<Self> {
        match path {
            [name] => Self::new(DEFAULT_NAMESPACE, name.as_str()),
            [namespace, name] => Self::new(namespace.as_str(), name.as_str()),
            _ => Err(Error::invalid(format!(
                "a dataset descriptor path has one element (name) or two (namespace, name), got {}",
                path.len()
            ))),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for DatasetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Checks that `value` is a DNS-1123 label: 1–63 characters of `[a-z0-9-]`, starting and
/// ending with an alphanumeric character.
pub fn validate_label(what: &str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 63 {
        Some("must be at most 63 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("must consist of lower-case letters, digits and '-'")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("must start and end with a letter or digit")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::invalid(format!(
            "invalid {what} {value:?}: {reason} (a DNS-1123 label)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_labels() {
        for ok in ["a", "sales", "sales-2024", "0abc", &"x".repeat(63)] {
            assert!(validate_label("name", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_non_labels() {
        for bad in [
            "",
            "..",
            "../etc",
            "a/b",
            "Sales",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "ä",
            " a",
            &"x".repeat(64),
        ] {
            let err = validate_label("name", bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn descriptor_paths() {
        let one = DatasetId::from_path(&["sales".into()]).unwrap();
        assert_eq!((one.namespace(), one.name()), ("default", "sales"));
        let two = DatasetId::from_path(&["analytics".into(), "sales".into()]).unwrap();
        assert_eq!(two.to_string(), "analytics/sales");
        assert!(DatasetId::from_path(&[]).is_err());
        assert!(DatasetId::from_path(&["a".into(), "b".into(), "c".into()]).is_err());
        assert!(DatasetId::from_path(&["..".into(), "x".into()]).is_err());
    }
}
