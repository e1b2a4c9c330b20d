//! Consumers and releases, through real nodes on a real MinIO: named and counted consumers,
//! releases through another node and across a restart, concurrent releases, a release
//! during a read, a consumer that never comes, and the refusals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use arrow_flight::{Action, FlightClient};
use common::*;
use futures::StreamExt;
use tonic::Code;

const GRACE: Duration = Duration::from_millis(700);

async fn action(
    client: &mut FlightClient,
    kind: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, tonic::Status> {
    let mut s = client
        .do_action(Action::new(kind, serde_json::to_vec(&body).unwrap()))
        .await
        .map_err(status)?;
    let first = s.next().await.unwrap().map_err(status)?;
    Ok(serde_json::from_slice(&first).unwrap())
}

async fn release(
    client: &mut FlightClient,
    ticket: &str,
    consumer: Option<&str>,
) -> Result<serde_json::Value, tonic::Status> {
    let mut body = serde_json::json!({ "ticket": ticket });
    if let Some(c) = consumer {
        body["consumer"] = c.into();
    }
    action(client, "release", body).await
}

/// Two nodes sharing one MinIO prefix.
async fn pool(target: &MinioTarget) -> (TestNode, TestNode) {
    pool_with_grace(target, GRACE).await
}

async fn pool_with_grace(target: &MinioTarget, grace: Duration) -> (TestNode, TestNode) {
    let start = || {
        TestNode::start(|c| {
            target.configure(c);
            c.release_grace = grace;
        })
    };
    (start().await, start().await)
}

async fn upload(c: &mut FlightClient, name: &str, consumers: &str) -> serde_json::Value {
    c.add_header("x-flight-consumers", consumers).unwrap();
    let put = put(c, descriptor("team", name), vec![batch(0, 1000)]).await;
    c.metadata_mut().remove("x-flight-consumers");
    put.unwrap()
}

/// Whether the record of `version` is (or becomes, within `wait`) a tombstone.
async fn tombstoned_within(
    versions: &flight_node::versions::Versions,
    id: &flight_node::name::DatasetId,
    version: u64,
    wait: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let record = versions.record(id, version).await.unwrap().unwrap().record;
        if matches!(record, flight_node::versions::Record::Deleted(_)) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gone(c: &mut FlightClient, ticket: &str) -> bool {
    match get(c, ticket).await {
        Err(s) => {
            assert_eq!(s.code(), Code::NotFound, "{s}");
            true
        }
        Ok(_) => false,
    }
}

/// Waits (up to 10 s) until the version cannot be read any more.
async fn wait_gone(c: &mut FlightClient, ticket: &str) {
    for _ in 0..100 {
        if gone(c, ticket).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{ticket} is still readable");
}

#[tokio::test]
async fn named_consumers_release_through_any_node_and_across_a_restart() {
    let target = minio();
    let (a, b) = pool(&target).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let put = upload(&mut ca, "scores", "scorer,reporter").await;
    let ticket = put["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        put["consumers"]["pending"],
        serde_json::json!(["scorer", "reporter"])
    );

    // Refusals: a stranger, no name, a version without consumers.
    let e = release(&mut cb, &ticket, Some("stranger"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("scorer, reporter"), "{e}");
    let e = release(&mut cb, &ticket, None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let plain = put_plain(&mut ca).await;
    let e = release(&mut ca, &plain, Some("scorer")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // Reading does not release; the scorer releases through the other node, twice.
    assert_eq!(
        concat(&get(&mut cb, &ticket).await.unwrap()),
        batch(0, 1000)
    );
    let r = release(&mut cb, &ticket, Some("scorer")).await.unwrap();
    assert_eq!(r["consumers"]["pending"], serde_json::json!(["reporter"]));
    let again = release(&mut ca, &ticket, Some("scorer")).await.unwrap();
    assert_eq!(again["consumers"]["releases"], 1);

    // The first node restarts; the release it saw is in the record.
    a.stop().await;
    let a = TestNode::start(|c| {
        target.configure(c);
        c.release_grace = GRACE;
    })
    .await;
    let mut ca = a.client().await;
    tokio::time::sleep(GRACE * 2).await;
    assert!(
        !gone(&mut ca, &ticket).await,
        "deleted before every consumer released"
    );
    let done = release(&mut ca, &ticket, Some("reporter")).await.unwrap();
    assert_eq!(done["consumers"]["pending"], serde_json::json!([]));
    assert!(done["consumers"]["allReleasedAt"].is_string());
    // Readable during the grace period, then gone from both nodes and from storage.
    assert!(!gone(&mut cb, &ticket).await);
    wait_gone(&mut ca, &ticket).await;
    wait_gone(&mut cb, &ticket).await;
    let versions = flight_node::versions::Versions::new(target.storage());
    let id = flight_node::name::DatasetId::new("team", "scores").unwrap();
    assert!(
        tombstoned_within(&versions, &id, 1, Duration::from_secs(5)).await,
        "the record was not replaced by a tombstone"
    );
    // A release of a deleted version is NotFound.
    let e = release(&mut cb, &ticket, Some("reporter"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    a.stop().await;
    b.stop().await;
}

async fn put_plain(c: &mut FlightClient) -> String {
    let p = put(c, descriptor("team", "plain"), vec![batch(0, 10)])
        .await
        .unwrap();
    p["ticket"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn concurrent_counted_releases_through_two_nodes_all_count() {
    let target = minio();
    // A long grace: the record is checked before the version ends.
    let (a, b) = pool_with_grace(&target, Duration::from_secs(60)).await;
    let mut ca = a.client().await;
    let put = upload(&mut ca, "fanout", "12").await;
    let ticket = put["ticket"].as_str().unwrap().to_string();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let t = ticket.clone();
        tasks.push(tokio::spawn(async move {
            release(&mut c, &t, Some(&format!("worker-{i}"))).await
        }));
    }
    let mut completed = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        if r["consumers"]["releases"] == 12 {
            completed += 1;
        }
    }
    assert!(completed >= 1, "no answer saw the twelfth release");
    let versions = flight_node::versions::Versions::new(target.storage());
    let id = flight_node::name::DatasetId::new("team", "fanout").unwrap();
    let (m, _) = versions.read(&id, 1).await.unwrap();
    let consumers = m.consumers.unwrap();
    assert_eq!(consumers.releases, 12, "a concurrent release was lost");
    assert_eq!(consumers.released.len(), 12);
    assert!(consumers.done_at.is_some());
    // The version now ends after the grace, not at its TTL.
    assert!(m.expires_at.unwrap() <= chrono::Utc::now() + chrono::Duration::seconds(61));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_release_during_a_read_waits_for_the_read_and_a_missing_consumer_keeps_the_version() {
    let target = minio();
    let (a, b) = pool(&target).await;
    let mut ca = a.client().await;
    // About 60 MB: more than HTTP/2 flow control lets the node send ahead of the reader,
    // so the node is still sending when the version is released.
    let batches: Vec<_> = (0..100).map(|i| batch(i * 20_000, 20_000)).collect();
    ca.add_header("x-flight-consumers", "1").unwrap();
    let put = put(&mut ca, descriptor("team", "long"), batches.clone())
        .await
        .unwrap();
    ca.metadata_mut().remove("x-flight-consumers");
    let ticket = put["ticket"].as_str().unwrap().to_string();
    let mut stream = ca
        .do_get(arrow_flight::Ticket::new(ticket.clone()))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let mut cr = a.client().await;
    release(&mut cr, &ticket, None).await.unwrap();
    tokio::time::sleep(GRACE * 3).await;
    // Past the grace, the read in flight holds the deletion back: the record is live.
    let versions = flight_node::versions::Versions::new(target.storage());
    let id = flight_node::name::DatasetId::new("team", "long").unwrap();
    let record = versions.record(&id, 1).await.unwrap().unwrap().record;
    assert!(
        matches!(record, flight_node::versions::Record::Live(_)),
        "deleted under a read: {record:?}"
    );
    // The read started before the release finishes with every row.
    let mut rows = first.num_rows();
    while let Some(b) = stream.next().await {
        rows += b.unwrap().num_rows();
    }
    assert_eq!(rows, 100 * 20_000);
    drop(stream);
    wait_gone(&mut cr, &ticket).await;
    assert!(
        tombstoned_within(&versions, &id, 1, Duration::from_secs(5)).await,
        "not deleted after the read"
    );

    // Two consumers, one never comes: nothing is deleted (the TTL is the backstop).
    let put = upload(&mut ca, "half", "2").await;
    let t = put["ticket"].as_str().unwrap().to_string();
    release(&mut ca, &t, None).await.unwrap();
    tokio::time::sleep(GRACE * 3).await;
    let mut cb = b.client().await;
    assert_eq!(concat(&get(&mut cb, &t).await.unwrap()), batch(0, 1000));
    a.stop().await;
    b.stop().await;
}

/// (I4) Releases and renews racing a delete of the same version, through two nodes on
/// MinIO: whatever the order, the version ends deleted (no swap brings it back), the other
/// version of the dataset is untouched, and the invariant checker agrees from a fresh node.
#[tokio::test]
async fn releases_and_renews_racing_a_delete_never_bring_the_version_back() {
    let target = minio();
    let (a, b) = pool_with_grace(&target, Duration::from_secs(60)).await;
    let mut ca = a.client().await;
    let doomed = upload(&mut ca, "raced", "8").await;
    let doomed = doomed["ticket"].as_str().unwrap().to_string();
    let kept = upload(&mut ca, "raced", "1").await;
    let kept = kept["ticket"].as_str().unwrap().to_string();

    let mut racers = Vec::new();
    for i in 0..8 {
        let mut c = if i % 2 == 0 {
            a.client().await
        } else {
            b.client().await
        };
        let t = doomed.clone();
        racers.push(tokio::spawn(async move {
            if i % 4 == 3 {
                action(
                    &mut c,
                    "renew",
                    serde_json::json!({"ticket": t, "ttl": "2h"}),
                )
                .await
            } else {
                release(&mut c, &t, Some(&format!("worker-{i}"))).await
            }
        }));
    }
    let mut cb = b.client().await;
    action(
        &mut cb,
        "delete",
        serde_json::json!({"namespace": "team", "name": "raced", "version": 1}),
    )
    .await
    .unwrap();
    for r in racers {
        if let Err(e) = r.await.unwrap() {
            assert!(
                matches!(e.code(), Code::NotFound | Code::Aborted),
                "a release or renew racing a delete: {e}"
            );
        }
    }
    let versions = flight_node::versions::Versions::new(target.storage());
    let id = flight_node::name::DatasetId::new("team", "raced").unwrap();
    assert!(tombstoned_within(&versions, &id, 1, Duration::ZERO).await);
    let acked = std::collections::HashMap::from([(kept, batch(0, 1000))]);
    common::check::check(&a.config, &acked, &[doomed], &[]).await;
    a.stop().await;
    b.stop().await;
}
