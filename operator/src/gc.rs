//! Pure garbage-collection plan of one dataset: which versions expired, whether the whole
//! resource expired, and when to look again. The dataset controller executes the plan.

use std::time::Duration;

use chrono::{DateTime, Utc};
use flight_core::manifest::Manifest;

use crate::ttl::{self, TtlError};

/// What to do with a dataset at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Older versions whose own expiry has passed: delete them from storage now.
    pub expired_versions: Vec<u64>,
    /// Newest version that stays, with its expiry.
    pub newest: Option<(Manifest, DateTime<Utc>)>,
    /// Versions left after the expired ones are removed.
    pub remaining: usize,
    /// The resource's expiry: its newest version's, or `created + ttl` with no version.
    pub expires_at: DateTime<Utc>,
    /// The newest version (or the empty resource) expired: delete the resource.
    pub expired: bool,
    /// Earliest future expiry (the resource or an older version): wake up then.
    pub next_expiry: DateTime<Utc>,
}

/// Plans the collection of a dataset whose committed versions are `manifests`.
///
/// `ttl` applies to versions whose manifest records no expiry, and to the resource itself
/// while it has no version; `created` is the resource's creation time.
pub fn plan(
    manifests: &[Manifest],
    ttl: Duration,
    created: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Plan, TtlError> {
    let mut versions = manifests
        .iter()
        .map(|m| Ok((m, ttl::version_expiry(m.expires_at, m.created_at, ttl)?)))
        .collect::<Result<Vec<_>, TtlError>>()?;
    versions.sort_by_key(|(m, _)| m.version);
    let newest = versions.pop();
    let expires_at = match &newest {
        Some((_, at)) => *at,
        None => ttl::expiry(created, ttl)?,
    };
    let expired = ttl::is_expired(expires_at, now);
    let (gone, kept): (Vec<_>, Vec<_>) = versions
        .into_iter()
        .partition(|(_, at)| ttl::is_expired(*at, now));
    let next_expiry = kept
        .iter()
        .map(|(_, at)| *at)
        .chain(std::iter::once(expires_at))
        .min()
        .unwrap_or(expires_at);
    Ok(Plan {
        // Once the resource expired the finalizer removes everything at once.
        expired_versions: if expired {
            Vec::new()
        } else {
            gone.iter().map(|(m, _)| m.version).collect()
        },
        remaining: kept.len() + usize::from(newest.is_some()),
        newest: newest.map(|(m, at)| (m.clone(), at)),
        expires_at,
        expired,
        next_expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::t;

    fn manifest(version: u64, created: i64, expires: Option<i64>) -> Manifest {
        let json = serde_json::json!({
            "format": flight_core::manifest::MANIFEST_FORMAT,
            "namespace": "data",
            "name": "sales",
            "version": version,
            "uploadId": "01J0000000000000000000000",
            "schema": "",
            "columns": [],
            "rows": 10,
            "bytes": 100,
            "storedBytes": 50,
            "parts": [],
            "createdAt": t(created),
            "expiresAt": expires.map(t),
            "ttlSeconds": null,
            "source": "test",
        });
        serde_json::from_value(json).expect("manifest json")
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn empty_dataset_expires_at_creation_plus_ttl() {
        let p = plan(&[], HOUR, t(0), t(100)).expect("plan");
        assert_eq!(p.expires_at, t(3600));
        assert!(!p.expired);
        assert_eq!(p.next_expiry, t(3600));
        assert!(plan(&[], HOUR, t(0), t(3600)).expect("plan").expired);
    }

    #[test]
    fn older_versions_go_as_they_expire_and_the_newest_decides() {
        let ms = [
            manifest(1, 0, None),          // expires 3600 via ttl
            manifest(2, 1000, Some(2000)), // recorded expiry
            manifest(3, 3000, None),       // expires 6600
        ];
        let p = plan(&ms, HOUR, t(0), t(2500)).expect("plan");
        assert_eq!(p.expired_versions, vec![2]);
        assert_eq!(p.remaining, 2);
        assert_eq!(p.newest.as_ref().map(|(m, _)| m.version), Some(3));
        assert_eq!(p.expires_at, t(6600));
        assert_eq!(p.next_expiry, t(3600), "wakes for version 1 first");
        assert!(!p.expired);

        let p = plan(&ms, HOUR, t(0), t(6600)).expect("plan");
        assert!(p.expired, "newest expired at the boundary instant");
        assert!(
            p.expired_versions.is_empty(),
            "the finalizer removes everything"
        );
    }

    #[test]
    fn manifest_order_does_not_matter() {
        let ms = [manifest(3, 3000, None), manifest(1, 0, None)];
        let p = plan(&ms, HOUR, t(0), t(10)).expect("plan");
        assert_eq!(p.newest.map(|(m, _)| m.version), Some(1 + 2));
    }

    #[test]
    fn overflowing_expiry_is_an_error() {
        let huge = Duration::from_secs(u64::MAX / 2);
        assert!(plan(&[], huge, t(0), t(0)).is_err());
        assert!(plan(&[manifest(1, 0, None)], huge, t(0), t(0)).is_err());
    }
}
