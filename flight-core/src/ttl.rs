//! Time-to-live parsing and expiry arithmetic, shared by the node and the operator.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

/// The longest TTL accepted (100 years); longer values are almost certainly mistakes and
/// would overflow timestamp arithmetic.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a positive duration such as `30m`, `6h`, `7d` or `1h 30m`.
///
/// Zero, negative, unit-less and over-long values are refused with `InvalidArgument`.
pub fn parse_ttl(text: &str) -> Result<Duration> {
    let trimmed = text.trim();
    let ttl = humantime::parse_duration(trimmed).map_err(|e| {
        Error::invalid(format!(
            "invalid TTL {text:?}: {e}; expected a positive duration such as 30m, 6h or 7d"
        ))
    })?;
    if ttl.is_zero() {
        return Err(Error::invalid(format!(
            "invalid TTL {text:?}: must be longer than zero"
        )));
    }
    if ttl > MAX_TTL {
        return Err(Error::invalid(format!(
            "invalid TTL {text:?}: longer than the maximum of 100 years"
        )));
    }
    Ok(ttl)
}

/// `created + ttl`, or `None` when the sum is not representable.
pub fn expires_at(created: DateTime<Utc>, ttl: Duration) -> Option<DateTime<Utc>> {
    let ttl = chrono::Duration::from_std(ttl).ok()?;
    created.checked_add_signed(ttl)
}

/// Whether a version with this expiry has expired at `now`. The boundary instant counts as
/// expired, so a reader and the garbage collector agree on it.
pub fn is_expired(expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    expires_at.is_some_and(|at| at <= now)
}

/// Formats a duration the way users write them (`6h`, `1day 2h`).
pub fn format_ttl(ttl: Duration) -> String {
    humantime::format_duration(ttl).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_positive_durations() {
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("6h").unwrap(), Duration::from_secs(6 * 3600));
        assert_eq!(parse_ttl(" 7d ").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_ttl("1h 30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "0s",
            "0",
            "-5m",
            "soon",
            "5",
            "1000000y",
            "99999999999999999999h",
        ] {
            let err = parse_ttl(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn expiry_arithmetic() {
        let created = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let at = expires_at(created, Duration::from_secs(3600)).unwrap();
        assert_eq!(at, Utc.with_ymd_and_hms(2026, 1, 1, 1, 0, 0).unwrap());
        // The boundary instant is expired; one second before is not.
        assert!(is_expired(Some(at), at));
        assert!(!is_expired(Some(at), at - chrono::Duration::seconds(1)));
        assert!(!is_expired(None, at));
        // Overflow is reported, not wrapped.
        assert!(expires_at(DateTime::<Utc>::MAX_UTC, Duration::from_secs(1)).is_none());
        assert!(expires_at(created, Duration::from_secs(u64::MAX)).is_none());
    }
}
