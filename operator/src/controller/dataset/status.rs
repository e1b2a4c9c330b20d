//! Pure status computation of the ArrowDataset controller from its collection plan.

use chrono::{DateTime, Utc};
use flight_core::name::DatasetId;
use flight_core::protocol::PreloadResult;
use flight_core::ticket::{Ticket, TicketSigner};

use crate::controller::{clear_condition, set_condition, NewCondition};
use crate::crd::condition;
use crate::crd::{ArrowDatasetStatus, ConsumersStatus, DatasetPhase, Tier};
use crate::gc::Plan;
use crate::ttl;

/// Formats a byte count for humans (`512 B`, `12.5 MiB`), in binary units.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Fills the status of a live (not expired) dataset from its plan.
#[allow(clippy::too_many_arguments)]
pub fn fill(
    status: &mut ArrowDatasetStatus,
    plan: &Plan,
    id: &DatasetId,
    signer: Option<&TicketSigner>,
    endpoint: String,
    preload: Option<Result<PreloadResult, String>>,
    generation: Option<i64>,
    now: DateTime<Utc>,
) {
    status.observed_generation = generation;
    status.endpoint = Some(endpoint);
    status.expires_at = Some(ttl::format_instant(plan.expires_at));
    status.versions = Some(i64::try_from(plan.remaining).unwrap_or(i64::MAX));
    clear_condition(&mut status.conditions, condition::CLEANUP_BLOCKED);
    match &plan.newest {
        None => {
            status.phase = DatasetPhase::Pending;
            status.message =
                Some("waiting for a first version: upload it with DoPut or set spec.source".into());
            status.ticket = None;
            status.version = None;
            status.rows = None;
            status.bytes = None;
            status.stored_bytes = None;
            status.size = None;
            status.tier = None;
            status.hot = None;
            status.consumers = None;
            set_condition(
                &mut status.conditions,
                NewCondition {
                    type_: condition::READY,
                    status: false,
                    reason: "NoVersion",
                    message: "no version has been uploaded or loaded yet".into(),
                },
                generation,
                now,
            );
        }
        Some((manifest, _)) => {
            status.phase = DatasetPhase::Ready;
            status.message = Some(format!(
                "version {} is readable until {}",
                manifest.version,
                ttl::format_instant(plan.expires_at)
            ));
            status.ticket = Some(Ticket::new(id.clone(), manifest.version).encode(signer));
            status.version = Some(to_i64(manifest.version));
            status.rows = Some(to_i64(manifest.rows));
            status.bytes = Some(to_i64(manifest.bytes));
            status.stored_bytes = Some(to_i64(manifest.stored_bytes));
            status.size = Some(human_bytes(manifest.bytes));
            status.consumers = manifest.consumers.as_ref().map(ConsumersStatus::of);
            // Memory when the owners of every part confirmed a preload; otherwise the
            // durable copy is what the operator can vouch for (nodes also cache what they
            // serve).
            let all_hot = matches!(&preload, Some(Ok(p)) if p.cached);
            status.tier = Some(if all_hot { Tier::Memory } else { Tier::Storage });
            status.hot = match &preload {
                Some(Ok(p)) => Some(format!("{}/{}", p.parts_cached, p.parts)),
                _ => None,
            };
            set_condition(
                &mut status.conditions,
                NewCondition {
                    type_: condition::READY,
                    status: true,
                    reason: "VersionAvailable",
                    message: format!("version {} is readable", manifest.version),
                },
                generation,
                now,
            );
        }
    }
    if let Some(result) = &preload {
        let (status_ok, reason, message) = match result {
            Ok(p) if p.cached => (
                true,
                "Preloaded",
                format!(
                    "the pool holds all {} parts of the newest version in memory, on {} node(s)",
                    p.parts,
                    p.nodes.iter().filter(|n| n.cached > 0).count()
                ),
            ),
            Ok(p) => {
                let failed: Vec<String> = p
                    .nodes
                    .iter()
                    .filter_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.node)))
                    .collect();
                if failed.is_empty() {
                    (
                        false,
                        "TooLargeForMemory",
                        format!(
                            "{} of {} parts of the newest version are in memory; the others do not fit their owners' memory limit and are served from storage",
                            p.parts_cached, p.parts
                        ),
                    )
                } else {
                    (
                        false,
                        "PartlyPreloaded",
                        format!(
                            "{} of {} parts of the newest version are in memory; the others are served from storage because their owners could not load them ({})",
                            p.parts_cached,
                            p.parts,
                            failed.join("; ")
                        ),
                    )
                }
            }
            Err(e) => (false, "PreloadFailed", e.clone()),
        };
        set_condition(
            &mut status.conditions,
            NewCondition {
                type_: condition::PRELOADED,
                status: status_ok,
                reason,
                message,
            },
            generation,
            now,
        );
    } else {
        clear_condition(&mut status.conditions, condition::PRELOADED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_kubectl_users_expect() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(13_107_200), "12.5 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }
}
