//! Bearer-token authentication and per-namespace authorisation.
//!
//! The token file (`--token-file`, mounted from a Secret) is YAML:
//!
//! ```yaml
//! tokens:
//!   - token: "change-me"
//!     namespaces: ["analytics", "default"]
//!   - token: "admin-token"
//!     namespaces: ["*"]          # every namespace
//! ```
//!
//! Clients send `authorization: Bearer <token>` on every call (pyarrow:
//! `FlightCallOptions(headers=[(b"authorization", b"Bearer <token>")])`), or call
//! `Handshake` first (pyarrow: `client.authenticate_basic_token("", token)`), which answers
//! with the bearer header to reuse. A missing or unknown token is `Unauthenticated`; a
//! namespace the token is not bound to is `PermissionDenied`.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// What a caller may touch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off, or the token is bound to `*`.
    Everything,
    /// Only these namespaces.
    Namespaces(Vec<String>),
}

impl Principal {
    /// Refuses namespaces outside the grant.
    pub fn check(&self, namespace: &str) -> Result<()> {
        if self.allows(namespace) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "the token is not allowed to use namespace {namespace:?}"
            )))
        }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Principal::Everything => true,
            Principal::Namespaces(ns) => ns.iter().any(|n| n == namespace),
        }
    }
}

/// The node's token table; empty when authentication is off.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// SHA-256 of each token, so the table never compares secrets byte by byte.
    tokens: Option<HashMap<[u8; 32], Principal>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRepr {
    tokens: Vec<TokenRepr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRepr {
    token: String,
    namespaces: Vec<String>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Auth {
    /// No authentication: every caller may use every namespace.
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn is_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    pub fn from_yaml(text: &str) -> Result<Self> {
        let repr: FileRepr = serde_yaml::from_str(text)
            .map_err(|e| Error::Config(format!("failed to parse token file: {e}")))?;
        let mut tokens = HashMap::new();
        for t in repr.tokens {
            if t.token.trim().is_empty() {
                return Err(Error::Config("token file holds an empty token".into()));
            }
            let principal = if t.namespaces.iter().any(|n| n == "*") {
                Principal::Everything
            } else {
                for ns in &t.namespaces {
                    crate::name::validate_label("namespace", ns)
                        .map_err(|e| Error::Config(format!("token file: {e}")))?;
                }
                Principal::Namespaces(t.namespaces)
            };
            tokens.insert(digest(&t.token), principal);
        }
        Ok(Self {
            tokens: Some(tokens),
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("failed to read token file {}: {e}", path.display()))
        })?;
        Self::from_yaml(&text)
    }

    /// Authenticates the value of an `authorization` header.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        if self.tokens.is_none() {
            return Ok(Principal::Everything);
        }
        let header = authorization.ok_or_else(|| {
            Error::Unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>`".into(),
            )
        })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
            })?;
        self.authenticate_token(token.trim())
    }

    /// A name for the caller's token, for per-token limits (a prefix of its digest, never
    /// the token); None when authentication is off.
    pub fn caller_key(&self, authorization: Option<&str>) -> Option<String> {
        self.tokens.as_ref()?;
        let header = authorization?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .unwrap_or(header)
            .trim();
        Some(
            digest(token)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Authenticates a raw token (from a handshake).
    pub fn authenticate_token(&self, token: &str) -> Result<Principal> {
        let Some(tokens) = &self.tokens else {
            return Ok(Principal::Everything);
        };
        tokens
            .get(&digest(token))
            .cloned()
            .ok_or_else(|| Error::Unauthenticated("unknown bearer token".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "tokens:\n  - {token: t1, namespaces: [analytics]}\n  - {token: admin, namespaces: ['*']}\n";

    #[test]
    fn tokens_and_namespaces() {
        let auth = Auth::from_yaml(YAML).unwrap();
        let p = auth.authenticate(Some("Bearer t1")).unwrap();
        assert!(p.check("analytics").is_ok());
        assert_eq!(
            p.check("sales").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            auth.authenticate(Some("Bearer admin")).unwrap(),
            Principal::Everything
        );
        for bad in [None, Some("Bearer nope"), Some("t1"), Some("Basic dDE=")] {
            assert_eq!(
                auth.authenticate(bad).unwrap_err().code(),
                tonic::Code::Unauthenticated,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn disabled_allows_everything() {
        let auth = Auth::disabled();
        assert!(!auth.is_enabled());
        assert_eq!(auth.authenticate(None).unwrap(), Principal::Everything);
    }

    #[test]
    fn bad_files() {
        assert!(Auth::from_yaml("tokens: [{token: '', namespaces: [a]}]").is_err());
        assert!(Auth::from_yaml("tokens: [{token: x, namespaces: ['../a']}]").is_err());
        assert!(Auth::from_yaml("nope: 1").is_err());
    }
}
