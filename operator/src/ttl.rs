//! TTL arithmetic of the dataset controller: when each version expires, when the resource
//! expires, and when the controller must wake up next.
//!
//! Every instant is computed with checked arithmetic: an absurd TTL is an invalid spec, never
//! a panic or a wrapped-around date.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Longest sleep between two reconciles of a dataset. Expiry is usually far away; waking up
/// now and then keeps status fresh and bounds the damage of a clock jump.
pub const MAX_REQUEUE: Duration = Duration::from_secs(3600);

/// Added to every wake-up so the controller wakes just after an expiry instant rather than
/// just before it (timer granularity, sub-second truncation), which would cost a second pass.
pub const WAKE_SLACK: Duration = Duration::from_secs(1);

/// Errors of TTL parsing and expiry arithmetic.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TtlError {
    /// The text is not a positive duration the node accepts.
    #[error("failed to parse TTL {text:?}: {reason}")]
    Invalid {
        /// The TTL as written.
        text: String,
        /// Why it was refused.
        reason: String,
    },
    /// `created + ttl` is not a representable instant.
    #[error("failed to compute expiry: {created} + {ttl:?} is out of range")]
    Overflow {
        /// Creation instant.
        created: DateTime<Utc>,
        /// The TTL that was added.
        ttl: Duration,
    },
}

/// Parses a TTL exactly as the flight node does (`30m`, `6h`, `7d`; not `0s`, `-5m`, `soon`).
pub fn parse_ttl(text: &str) -> Result<Duration, TtlError> {
    flight_core::ttl::parse_ttl(text).map_err(|e| TtlError::Invalid {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// `created + ttl`, or [`TtlError::Overflow`] when that instant does not exist.
pub fn expiry(created: DateTime<Utc>, ttl: Duration) -> Result<DateTime<Utc>, TtlError> {
    flight_core::ttl::expires_at(created, ttl).ok_or(TtlError::Overflow { created, ttl })
}

/// Expiry of one version: the instant its manifest recorded, else `created + ttl`.
pub fn version_expiry(
    recorded: Option<DateTime<Utc>>,
    created: DateTime<Utc>,
    ttl: Duration,
) -> Result<DateTime<Utc>, TtlError> {
    match recorded {
        Some(at) => Ok(at),
        None => expiry(created, ttl),
    }
}

/// Whether something expiring at `at` has expired at `now`: the node's own rule
/// ([`flight_core::ttl::is_expired`]; the boundary instant counts as expired), so the node
/// and the collector cannot disagree.
pub fn is_expired(at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    flight_core::ttl::is_expired(Some(at), now)
}

/// How long to sleep before the next expiry at `at`: zero when it has passed, otherwise the
/// remaining time plus [`WAKE_SLACK`], capped at [`MAX_REQUEUE`].
pub fn requeue_after(at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
    if is_expired(at, now) {
        return Duration::ZERO;
    }
    match (at - now).to_std() {
        Ok(left) => left.saturating_add(WAKE_SLACK).min(MAX_REQUEUE),
        // Unreachable since `at > now`, but a negative delta means "now".
        Err(_) => Duration::ZERO,
    }
}

/// Formats an instant as the RFC 3339 string written to status (second precision, `Z`).
pub fn format_instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    #[test]
    fn parses_positive_durations_and_refuses_the_rest() {
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in ["0s", "-5m", "soon", "", "5", "0h0m"] {
            assert!(
                matches!(parse_ttl(bad), Err(TtlError::Invalid { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn refuses_a_ttl_that_overflows_the_parser() {
        assert!(parse_ttl("99999999999999999999999d").is_err());
        assert!(parse_ttl("1000000000w").is_err());
    }

    #[test]
    fn expiry_adds_the_ttl() {
        assert_eq!(expiry(t(1_000), Duration::from_secs(60)), Ok(t(1_060)));
    }

    #[test]
    fn expiry_overflow_is_an_error_not_a_panic() {
        let huge = Duration::from_secs(u64::MAX);
        assert!(matches!(expiry(t(0), huge), Err(TtlError::Overflow { .. })));
        let near_end = DateTime::<Utc>::MAX_UTC;
        assert!(matches!(
            expiry(near_end, Duration::from_secs(1)),
            Err(TtlError::Overflow { .. })
        ));
    }

    #[test]
    fn recorded_expiry_wins_over_the_resource_ttl() {
        let created = t(1_000);
        assert_eq!(
            version_expiry(Some(t(5_000)), created, Duration::from_secs(60)),
            Ok(t(5_000))
        );
        assert_eq!(
            version_expiry(None, created, Duration::from_secs(60)),
            Ok(t(1_060))
        );
    }

    #[test]
    fn the_boundary_instant_is_expired() {
        let at = t(2_000);
        assert!(is_expired(at, at));
        assert!(is_expired(at, t(2_001)));
        let just_before = at - chrono::Duration::nanoseconds(1);
        assert!(!is_expired(at, just_before));
    }

    #[test]
    fn requeue_wakes_just_after_the_expiry() {
        let at = t(2_000);
        assert_eq!(requeue_after(at, t(1_990)), Duration::from_secs(11));
        // A nanosecond before the boundary still sleeps past it.
        let just_before = at - chrono::Duration::nanoseconds(1);
        let d = requeue_after(at, just_before);
        assert!(d > Duration::ZERO && d <= WAKE_SLACK + Duration::from_nanos(1));
        assert_eq!(requeue_after(at, at), Duration::ZERO);
        assert_eq!(requeue_after(at, t(9_999)), Duration::ZERO);
    }

    #[test]
    fn requeue_is_capped_for_far_expiries() {
        let far = DateTime::<Utc>::MAX_UTC;
        assert_eq!(requeue_after(far, t(0)), MAX_REQUEUE);
        assert_eq!(requeue_after(t(10_000_000), t(0)), MAX_REQUEUE);
    }

    #[test]
    fn operator_clock_behind_the_node_clock_only_delays_deletion() {
        // The node stamped created_at with a clock 5 s ahead of ours: we see the expiry 5 s
        // later than the node does, and the node already refuses to serve it meanwhile.
        let node_created = t(1_005);
        let at = expiry(node_created, Duration::from_secs(60)).expect("in range");
        let our_now = t(1_060);
        assert!(!is_expired(at, our_now));
        assert_eq!(requeue_after(at, our_now), Duration::from_secs(6));
    }

    #[test]
    fn instants_format_as_rfc3339_utc() {
        assert_eq!(format_instant(t(0)), "1970-01-01T00:00:00Z");
    }
}
