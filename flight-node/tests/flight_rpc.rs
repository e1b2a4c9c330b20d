//! Every RPC of the node against an in-process server on loopback, with the arrow-flight
//! client: uploads, pinned versions, info, actions, eviction and reload, contracts, auth,
//! limits and bad input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow_flight::{Action, FlightData};
use bytes::Bytes;
use common::*;
use flight_node::clock::ManualClock;
use futures::{StreamExt, TryStreamExt};
use tonic::Code;

fn put_ticket(v: &serde_json::Value) -> String {
    v["ticket"].as_str().unwrap().to_string()
}

async fn action(
    client: &mut arrow_flight::FlightClient,
    kind: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, tonic::Status> {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(&body).unwrap()
    };
    let mut s = client
        .do_action(Action::new(kind, body))
        .await
        .map_err(status)?;
    let first = s.next().await.unwrap().map_err(status)?;
    Ok(serde_json::from_slice(&first).unwrap())
}

#[tokio::test]
async fn versions_are_immutable_and_tickets_pin_them() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let v1 = put(
        &mut c,
        descriptor("analytics", "sales"),
        vec![batch(0, 100)],
    )
    .await
    .unwrap();
    let v2 = put(
        &mut c,
        descriptor("analytics", "sales"),
        vec![batch(1000, 50), batch(2000, 50)],
    )
    .await
    .unwrap();
    assert_eq!(v1["ticket"], "ads1:analytics/sales@1");
    assert_eq!(v2["ticket"], "ads1:analytics/sales@2");
    assert_eq!(
        (v1["version"].as_u64(), v1["rows"].as_u64()),
        (Some(1), Some(100))
    );
    assert_eq!(v2["rows"], 100);
    assert!(v1["bytes"].as_u64().unwrap() > 0);

    let got1 = concat(&get(&mut c, &put_ticket(&v1)).await.unwrap());
    assert_eq!(got1, batch(0, 100));
    let got2 = concat(&get(&mut c, &put_ticket(&v2)).await.unwrap());
    assert_eq!(got2, concat(&[batch(1000, 50), batch(2000, 50)]));

    // A one-element path is namespace `default`.
    let d = put(
        &mut c,
        arrow_flight::FlightDescriptor::new_path(vec!["solo".into()]),
        vec![batch(0, 1)],
    )
    .await
    .unwrap();
    assert_eq!(d["ticket"], "ads1:default/solo@1");
    node.stop().await;
}

#[tokio::test]
async fn flight_info_schema_and_listing() {
    let node = TestNode::start(|c| c.part_size = 16 * 1024).await;
    let mut c = node.client().await;
    let batches: Vec<RecordBatch> = (0..8).map(|i| batch(i * 1000, 1000)).collect();
    let put_result = put(&mut c, descriptor("analytics", "big"), batches.clone())
        .await
        .unwrap();
    put(&mut c, descriptor("other", "small"), vec![batch(0, 10)])
        .await
        .unwrap();

    let info = c
        .get_flight_info(descriptor("analytics", "big"))
        .await
        .unwrap();
    assert_eq!(info.total_records, 8000);
    assert!(info.total_bytes > 0);
    assert!(info.ordered);
    let schema = info.clone().try_decode_schema().unwrap();
    assert_eq!(schema.fields(), common::schema().fields());
    // Several parts: one endpoint per part, each fetchable on its own.
    assert!(info.endpoint.len() > 1, "{} endpoints", info.endpoint.len());
    let mut parts = Vec::new();
    for (i, ep) in info.endpoint.iter().enumerate() {
        let t = String::from_utf8(ep.ticket.as_ref().unwrap().ticket.to_vec()).unwrap();
        assert_eq!(t, format!("{}#{i}", put_ticket(&put_result)));
        assert_eq!(
            ep.location.last().unwrap().uri,
            "arrow-flight-reuse-connection://?"
        );
        parts.extend(get(&mut c, &t).await.unwrap());
    }
    assert_eq!(concat(&parts), concat(&batches));
    let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap();
    assert_eq!(meta["version"], 1);

    let schema = c.get_schema(descriptor("analytics", "big")).await.unwrap();
    assert_eq!(schema.fields(), common::schema().fields());

    let all: Vec<_> = c
        .list_flights(Bytes::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    let only: Vec<_> = c
        .list_flights(Bytes::from("other"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(
        only[0].flight_descriptor.as_ref().unwrap().path,
        vec!["other", "small"]
    );

    let actions: Vec<String> = c
        .list_actions()
        .await
        .unwrap()
        .map_ok(|a| a.r#type)
        .try_collect()
        .await
        .unwrap();
    for a in [
        "delete",
        "evict",
        "stats",
        "load",
        "renew",
        "RenewFlightEndpoint",
    ] {
        assert!(
            actions.contains(&a.to_string()),
            "{a} missing from {actions:?}"
        );
    }
    let err = c
        .get_flight_info(descriptor("analytics", "nope"))
        .await
        .unwrap_err();
    assert_eq!(status(err).code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test]
async fn evict_then_reload_from_parquet_and_delete() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let r = put(&mut c, descriptor("ns", "ds"), vec![batch(0, 5000)])
        .await
        .unwrap();
    let t = put_ticket(&r);
    get(&mut c, &t).await.unwrap();
    let s = action(&mut c, "stats", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(
        (
            s["hits"].as_u64(),
            s["misses"].as_u64(),
            s["datasetsCached"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );

    let e = action(
        &mut c,
        "evict",
        serde_json::json!({"namespace": "ns", "name": "ds"}),
    )
    .await
    .unwrap();
    assert_eq!(e["evicted"], 1);
    assert_eq!(
        action(&mut c, "stats", serde_json::Value::Null)
            .await
            .unwrap()["memoryUsed"],
        0
    );
    let reloaded = concat(&get(&mut c, &t).await.unwrap());
    assert_eq!(reloaded, batch(0, 5000));
    let s = action(&mut c, "stats", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(s["misses"], 1);
    assert_eq!(s["datasetsCached"], 1);

    let d = action(
        &mut c,
        "delete",
        serde_json::json!({"namespace": "ns", "name": "ds", "version": 1}),
    )
    .await
    .unwrap();
    assert_eq!(d["deleted"], serde_json::json!([1]));
    assert_eq!(get(&mut c, &t).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        action(
            &mut c,
            "delete",
            serde_json::json!({"namespace": "ns", "name": "ds"})
        )
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    // Only the tombstone of version 1 is left: it keeps the number from being reused.
    assert_eq!(
        files_under(&node.dir.path().join("ns/ds")),
        vec![node.dir.path().join("ns/ds/v1.manifest.json")]
    );
    node.stop().await;
}

#[tokio::test]
async fn tables_larger_than_memory_stream_from_storage() {
    let node = TestNode::start(|c| {
        c.memory_limit = 64 * 1024;
        c.part_size = 32 * 1024;
    })
    .await;
    let mut c = node.client().await;
    let batches: Vec<RecordBatch> = (0..10).map(|i| batch(i * 2000, 2000)).collect();
    let r = put(&mut c, descriptor("ns", "huge"), batches.clone())
        .await
        .unwrap();
    let got = get(&mut c, &put_ticket(&r)).await.unwrap();
    assert_eq!(concat(&got), concat(&batches));
    let s = action(&mut c, "stats", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(s["datasetsCached"], 0);
    assert!(s["memoryUsed"].as_u64().unwrap() <= 64 * 1024);
    node.stop().await;
}

#[tokio::test]
async fn lru_eviction_keeps_the_budget_and_reloads() {
    let node = TestNode::start(|c| c.memory_limit = 300 * 1024).await;
    let mut c = node.client().await;
    let mut tickets = Vec::new();
    for i in 0..6 {
        let r = put(
            &mut c,
            descriptor("ns", &format!("d{i}")),
            vec![batch(i * 10_000, 4000)],
        )
        .await
        .unwrap();
        tickets.push(put_ticket(&r));
    }
    let s = action(&mut c, "stats", serde_json::Value::Null)
        .await
        .unwrap();
    assert!(s["memoryUsed"].as_u64().unwrap() <= 300 * 1024, "{s}");
    assert!(s["evictions"].as_u64().unwrap() > 0, "{s}");
    for (i, t) in tickets.iter().enumerate() {
        assert_eq!(
            concat(&get(&mut c, t).await.unwrap()),
            batch(i as i64 * 10_000, 4000)
        );
    }
    node.stop().await;
}

#[tokio::test]
async fn contracts_refuse_mismatches_and_store_nothing() {
    let node = TestNode::start(|c| {
        let path = std::env::temp_dir().join(format!("contracts-{}.yaml", std::process::id()));
        std::fs::write(
            &path,
            "contracts:\n  scores-v1:\n    fields:\n      - {name: id, type: int64, nullable: false}\n      - {name: name, type: utf8}\n      - {name: score, type: float64}\n  strict:\n    fields:\n      - {name: id, type: int32}\n      - {name: region, type: utf8}\n",
        )
        .unwrap();
        c.contracts_file = Some(path);
    })
    .await;
    let mut c = node.client().await;
    c.add_header("x-flight-contract", "scores-v1").unwrap();
    let ok = put(&mut c, descriptor("ns", "good"), vec![batch(0, 10)])
        .await
        .unwrap();
    assert_eq!(ok["version"], 1);

    let mut c = node.client().await;
    c.add_header("x-flight-contract", "strict").unwrap();
    let err = put(&mut c, descriptor("ns", "bad"), vec![batch(0, 10)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let msg = err.message();
    assert!(
        msg.contains("column \"id\": expected int32, got int64"),
        "{msg}"
    );
    assert!(msg.contains("missing column \"region\""), "{msg}");
    assert!(msg.contains("unexpected column \"name\""), "{msg}");
    assert!(files_under(&node.dir.path().join("ns/bad")).is_empty());

    let mut c = node.client().await;
    c.add_header("x-flight-contract", "nope").unwrap();
    let err = put(&mut c, descriptor("ns", "bad"), vec![batch(0, 10)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("unknown data contract \"nope\""),
        "{}",
        err.message()
    );
    node.stop().await;
}

#[tokio::test]
async fn auth_tokens_and_namespaces() {
    let node = TestNode::start(|c| {
        let path = std::env::temp_dir().join(format!("tokens-{}.yaml", std::process::id()));
        std::fs::write(&path, "tokens:\n  - {token: t1, namespaces: [analytics]}\n  - {token: admin, namespaces: ['*']}\n").unwrap();
        c.token_file = Some(path);
    })
    .await;
    let mut anon = node.client().await;
    let err = put(&mut anon, descriptor("analytics", "x"), vec![batch(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut wrong = node.client_with_token("nope").await;
    let err = wrong.list_actions().await.err().map(status);
    assert_eq!(err.map(|e| e.code()), Some(Code::Unauthenticated));
    let err = put(&mut wrong, descriptor("analytics", "x"), vec![batch(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut t1 = node.client_with_token("t1").await;
    let r = put(&mut t1, descriptor("analytics", "x"), vec![batch(0, 1)])
        .await
        .unwrap();
    let err = put(&mut t1, descriptor("finance", "x"), vec![batch(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut admin = node.client_with_token("admin").await;
    put(&mut admin, descriptor("finance", "x"), vec![batch(0, 1)])
        .await
        .unwrap();
    // t1 cannot read finance, nor list it.
    assert_eq!(
        get(&mut t1, "ads1:finance/x@1").await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let visible: Vec<_> = t1
        .list_flights(Bytes::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(visible.len(), 1);
    assert_eq!(get(&mut t1, &put_ticket(&r)).await.unwrap().len(), 1);

    // Handshake with the token as payload answers with it.
    let mut hs = node.client().await;
    assert_eq!(
        hs.handshake(Bytes::from("t1")).await.unwrap(),
        Bytes::from("t1")
    );
    let mut hs = node.client().await;
    assert_eq!(
        status(hs.handshake(Bytes::from("bad")).await.unwrap_err()).code(),
        Code::Unauthenticated
    );
    node.stop().await;
}

#[tokio::test]
async fn bad_tickets_and_names_get_clear_codes_and_the_node_keeps_serving() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let r = put(&mut c, descriptor("ns", "ds"), vec![batch(0, 10)])
        .await
        .unwrap();
    let long = "x".repeat(10_000);
    for (ticket, code) in [
        ("", Code::InvalidArgument),
        ("garbage", Code::InvalidArgument),
        ("ads2:ns/ds@1", Code::InvalidArgument),
        ("ads1:ns/ds@0", Code::InvalidArgument),
        ("ads1:../etc@1", Code::InvalidArgument),
        ("ads1:ns/ds@1~c2lnbmVk", Code::InvalidArgument),
        (long.as_str(), Code::InvalidArgument),
        ("ads1:ns/ds@2", Code::NotFound),
        ("ads1:ns/other@1", Code::NotFound),
        ("ads1:ns/ds@1#5", Code::NotFound),
    ] {
        let err = get(&mut c, ticket).await.unwrap_err();
        assert_eq!(err.code(), code, "{ticket:.40}: {}", err.message());
    }
    let raw = c
        .do_get(arrow_flight::Ticket {
            ticket: Bytes::from_static(&[0xff, 0xfe, 0x00]),
        })
        .await;
    assert_eq!(status(raw.err().unwrap()).code(), Code::InvalidArgument);

    for path in [
        vec!["..", "x"],
        vec!["ns", "A"],
        vec!["ns", "a/b"],
        vec!["a", "b", "c"],
        vec![],
    ] {
        let desc =
            arrow_flight::FlightDescriptor::new_path(path.iter().map(|s| s.to_string()).collect());
        let err = put(&mut c, desc.clone(), vec![batch(0, 1)])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path:?}");
        let err = c.get_flight_info(desc).await.unwrap_err();
        assert_eq!(status(err).code(), Code::InvalidArgument, "{path:?}");
    }
    let cmd = arrow_flight::FlightDescriptor::new_cmd("SELECT 1");
    assert_eq!(
        status(c.get_flight_info(cmd).await.unwrap_err()).code(),
        Code::InvalidArgument
    );

    for (kind, body) in [
        ("delete", "{"),
        ("evict", "{\"name\": \"../x\"}"),
        ("load", "[]"),
        ("nope", ""),
    ] {
        let err = c
            .do_action(Action::new(kind, body.to_string()))
            .await
            .err()
            .map(status);
        assert_eq!(err.map(|e| e.code()), Some(Code::InvalidArgument), "{kind}");
    }
    let err = c
        .do_exchange(futures::stream::empty())
        .await
        .err()
        .map(status);
    assert_eq!(err.map(|e| e.code()), Some(Code::Unimplemented));
    // A dataset is complete once uploaded: the poll answers at once, finished.
    let poll = c.poll_flight_info(descriptor("ns", "ds")).await.unwrap();
    assert_eq!(poll.progress, Some(1.0));
    assert!(poll.flight_descriptor.is_none());
    assert_eq!(poll.info.unwrap().total_records, 10);

    // Still serving.
    assert_eq!(
        concat(&get(&mut c, &put_ticket(&r)).await.unwrap()),
        batch(0, 10)
    );
    node.stop().await;
}

/// Raw FlightData for hand-built streams.
fn encode(
    desc: Option<arrow_flight::FlightDescriptor>,
    batches: Vec<RecordBatch>,
) -> Vec<FlightData> {
    let schema = batches[0].schema();
    let s = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(desc)
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    futures::executor::block_on(s.try_collect()).unwrap()
}

async fn put_raw(
    c: &mut arrow_flight::FlightClient,
    msgs: Vec<Result<FlightData, arrow_flight::error::FlightError>>,
) -> Result<serde_json::Value, tonic::Status> {
    let mut results = c
        .do_put(futures::stream::iter(msgs))
        .await
        .map_err(status)?;
    match results.next().await {
        Some(Ok(r)) => Ok(serde_json::from_slice(&r.app_metadata).unwrap()),
        Some(Err(e)) => Err(status(e)),
        None => Err(tonic::Status::unknown("no result")),
    }
}

#[tokio::test]
async fn malformed_uploads_store_nothing() {
    let node = TestNode::start(|c| {
        c.max_upload_size = 200 * 1024;
        c.max_upload_batches = 500;
        c.upload_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut c = node.client().await;

    // Schema drift mid-stream: a second, different schema message.
    let first = encode(Some(descriptor("ns", "drift")), vec![batch(0, 5)]);
    let other_schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("z", arrow::datatypes::DataType::Int32, true),
    ]));
    let other = RecordBatch::try_new(
        other_schema,
        vec![std::sync::Arc::new(arrow::array::Int32Array::from(vec![1]))],
    )
    .unwrap();
    let second = encode(None, vec![other]);
    let msgs: Vec<_> = first.into_iter().chain(second).map(Ok).collect();
    let err = put_raw(&mut c, msgs).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // A batch before any schema, a stream with no descriptor, an empty stream.
    let mut msgs = encode(Some(descriptor("ns", "noschema")), vec![batch(0, 5)]);
    let body = msgs.remove(1);
    let mut first = body.clone();
    first.flight_descriptor = Some(descriptor("ns", "noschema"));
    let err = put_raw(&mut c, vec![Ok(first)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let nodesc = encode(None, vec![batch(0, 5)]);
    let err = put_raw(&mut c, nodesc.into_iter().map(Ok).collect())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = put_raw(&mut c, vec![]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // Garbage IPC bytes after a valid schema.
    let mut msgs = encode(Some(descriptor("ns", "garbage")), vec![batch(0, 5)]);
    msgs[1].data_header = Bytes::from_static(b"not a flatbuffer at all");
    let err = put_raw(&mut c, msgs.into_iter().map(Ok).collect())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // Over the upload size.
    let big: Vec<RecordBatch> = (0..20).map(|i| batch(i * 1000, 1000)).collect();
    let err = put(&mut c, descriptor("ns", "toobig"), big)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());

    // A flood of one-row batches over the batch limit.
    let flood: Vec<RecordBatch> = (0..2000).map(|i| batch(i, 1)).collect();
    let err = put(&mut c, descriptor("ns", "flood"), flood)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());

    // The client stops sending mid-stream and never ends the call (a hung or vanished atom
    // whose connection stays up): after the idle timeout the upload is refused with
    // DEADLINE_EXCEEDED and nothing is stored.
    let msgs = encode(
        Some(descriptor("ns", "cut")),
        vec![batch(0, 5), batch(5, 5)],
    );
    let input = futures::stream::iter(msgs.into_iter().map(Ok)).chain(futures::stream::pending());
    let mut results = c.do_put(input).await.map_err(status).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), results.next())
        .await
        .expect("the stalled upload was never refused")
        .unwrap()
        .map_err(status)
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{}", err.message());

    for name in ["drift", "noschema", "garbage", "toobig", "flood", "cut"] {
        // Give cancelled handlers a moment to clean up their parts.
        let dir = node.dir.path().join("ns").join(name);
        let mut left = files_under(&dir);
        for _ in 0..50 {
            if left.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = files_under(&dir);
        }
        assert!(left.is_empty(), "{name}: {left:?}");
    }
    let listed: Vec<_> = c
        .list_flights(Bytes::new())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        listed.is_empty(),
        "{:?}",
        listed
            .iter()
            .map(|i| i.flight_descriptor.clone())
            .collect::<Vec<_>>()
    );
    // And the node still serves.
    put(&mut c, descriptor("ns", "fine"), vec![batch(0, 10)])
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test]
async fn a_flood_of_one_row_batches_is_coalesced() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let flood: Vec<RecordBatch> = (0..5000).map(|i| batch(i, 1)).collect();
    let r = put(&mut c, descriptor("ns", "flood"), flood).await.unwrap();
    assert_eq!(r["rows"], 5000);
    let got = get(&mut c, &put_ticket(&r)).await.unwrap();
    assert!(got.len() < 10, "{} batches", got.len());
    assert_eq!(concat(&got), batch(0, 5000));
    node.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted() {
    let node = TestNode::start(|c| c.max_message_size = 256 * 1024).await;
    let mut c = node.client().await;
    let schema = schema();
    // One 40k-row batch is ~1 MiB: sent as a single message above the limit.
    let big = batch(0, 40_000);
    let stream = arrow_flight::encode::FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(usize::MAX)
        .with_flight_descriptor(Some(descriptor("ns", "big")))
        .build(futures::stream::iter([Ok(big)]));
    let err = match c.do_put(stream).await {
        Ok(mut s) => status(s.next().await.unwrap().unwrap_err()),
        Err(e) => status(e),
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(err.message().contains("max_chunksize"), "{}", err.message());
    put(&mut c, descriptor("ns", "small"), vec![batch(0, 10)])
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test]
async fn ttl_expiry_and_lease_renewal() {
    let clock = Arc::new(ManualClock::starting_now());
    let node = TestNode::start_with_clock(clock.clone(), |_| {}).await;
    let mut c = node.client().await;
    c.add_header("x-flight-ttl", "1s").unwrap();
    let short = put(&mut c, descriptor("ns", "short"), vec![batch(0, 10)])
        .await
        .unwrap();
    assert!(short["expiresAt"].is_string());
    let mut c2 = node.client().await;
    c2.add_header("x-flight-ttl", "1h").unwrap();
    let long = put(&mut c2, descriptor("ns", "long"), vec![batch(0, 10)])
        .await
        .unwrap();

    let info = c.get_flight_info(descriptor("ns", "long")).await.unwrap();
    assert!(info.endpoint[0].expiration_time.is_some());

    let renewed = action(
        &mut c,
        "renew",
        serde_json::json!({"ticket": put_ticket(&long), "ttl": "3h"}),
    )
    .await
    .unwrap();
    let before: chrono::DateTime<chrono::Utc> =
        long["expiresAt"].as_str().unwrap().parse().unwrap();
    let after: chrono::DateTime<chrono::Utc> =
        renewed["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(after > before + chrono::Duration::minutes(90));

    // One second on: `short` is still readable at exactly its expiry minus a nanosecond,
    // and expired from its expiry instant on.
    let expires: chrono::DateTime<chrono::Utc> =
        short["expiresAt"].as_str().unwrap().parse().unwrap();
    clock.set(expires - chrono::Duration::nanoseconds(1));
    get(&mut c, &put_ticket(&short)).await.unwrap();
    clock.set(expires);
    let err = get(&mut c, &put_ticket(&short)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("expired"), "{}", err.message());
    let err = action(
        &mut c,
        "renew",
        serde_json::json!({"ticket": put_ticket(&short), "ttl": "1h"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut bad = node.client().await;
    bad.add_header("x-flight-ttl", "soon").unwrap();
    assert_eq!(
        put(&mut bad, descriptor("ns", "x"), vec![batch(0, 1)])
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    node.stop().await;
}

#[tokio::test]
async fn load_action_ingests_csv_and_parquet_from_storage() {
    // `incoming/` is a shared landing area; each namespace may also read its own prefix.
    let node = TestNode::start(|c| c.load_source_prefixes = vec!["incoming/".into()]).await;
    let mut c = node.client().await;
    let src = node.dir.path().join("incoming");
    std::fs::create_dir_all(&src).unwrap();
    let mut csv = String::from("id,city,amount\n");
    for i in 0..1000 {
        csv.push_str(&format!("{i},city-{},{}.25\n", i % 7, i));
    }
    std::fs::write(src.join("sales.csv"), csv).unwrap();
    let r = action(&mut c, "load", serde_json::json!({"namespace": "ns", "name": "sales", "source": "incoming/sales.csv", "ttl": "2h"})).await.unwrap();
    assert_eq!(r["rows"], 1000);
    let got = concat(&get(&mut c, &put_ticket(&r)).await.unwrap());
    assert_eq!(got.num_rows(), 1000);
    assert_eq!(
        got.schema().field(0).data_type(),
        &arrow::datatypes::DataType::Int64
    );

    // Parquet written with the same writer the node uses.
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema(), None).unwrap();
    w.write(&batch(0, 300)).unwrap();
    w.close().unwrap();
    for dir in ["ns/raw", "other/raw"] {
        let dir = node.dir.path().join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.parquet"), &buf).unwrap();
    }
    let r = action(
        &mut c,
        "load",
        serde_json::json!({"namespace": "ns", "name": "pq", "source": "ns/raw/t.parquet"}),
    )
    .await
    .unwrap();
    assert_eq!(
        concat(&get(&mut c, &put_ticket(&r)).await.unwrap()),
        batch(0, 300)
    );

    for (source, code) in [
        ("incoming/missing.csv", Code::NotFound),
        ("../etc/passwd", Code::InvalidArgument),
        ("s3://elsewhere/x.csv", Code::InvalidArgument),
        ("incoming/sales.txt", Code::InvalidArgument),
        // Another namespace's objects, however they are named.
        ("other/raw/t.parquet", Code::PermissionDenied),
        ("ns/../other/raw/t.parquet", Code::InvalidArgument),
        ("/other/raw/t.parquet", Code::PermissionDenied),
        ("incomingx/sales.csv", Code::PermissionDenied),
        ("ns", Code::PermissionDenied),
    ] {
        let err = action(
            &mut c,
            "load",
            serde_json::json!({"namespace": "ns", "name": "x", "source": source}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), code, "{source}: {}", err.message());
    }
    node.stop().await;
}

#[tokio::test]
async fn concurrent_uploads_to_one_dataset_get_distinct_versions() {
    let node = TestNode::start(|_| {}).await;
    let mut handles = Vec::new();
    for i in 0..6i64 {
        let mut c = node.client().await;
        handles.push(tokio::spawn(async move {
            put(&mut c, descriptor("ns", "race"), vec![batch(i * 100, 100)])
                .await
                .unwrap()
        }));
    }
    let mut versions = Vec::new();
    let mut c = node.client().await;
    for h in handles {
        let r = h.await.unwrap();
        let got = concat(&get(&mut c, &put_ticket(&r)).await.unwrap());
        // Each version holds exactly what its uploader sent.
        let start = got
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(got, batch(start, 100));
        versions.push(r["version"].as_u64().unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2, 3, 4, 5, 6]);
    node.stop().await;
}

#[tokio::test]
async fn handshake_with_auth_off_echoes_and_ticket_signing_round_trips() {
    let key = std::env::temp_dir().join(format!("ticket-key-{}", std::process::id()));
    std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
    let node = TestNode::start(|c| c.ticket_key_file = Some(key.clone())).await;
    let mut c = node.client().await;
    assert_eq!(
        c.handshake(Bytes::from("anything")).await.unwrap(),
        Bytes::from("anything")
    );
    let r = put(&mut c, descriptor("ns", "signed"), vec![batch(0, 3)])
        .await
        .unwrap();
    let t = put_ticket(&r);
    assert!(t.starts_with("ads1:ns/signed@1~"), "{t}");
    assert_eq!(concat(&get(&mut c, &t).await.unwrap()), batch(0, 3));
    assert_eq!(
        get(&mut c, "ads1:ns/signed@1").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let forged = t.replace("@1~", "@1~A");
    assert_eq!(
        get(&mut c, &forged).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    node.stop().await;
}

#[tokio::test]
async fn preload_brings_a_version_into_memory_and_stats_lists_it() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    put(&mut c, descriptor("ns", "warm"), vec![batch(0, 100)])
        .await
        .unwrap();
    action(
        &mut c,
        "evict",
        serde_json::json!({"namespace": "ns", "name": "warm"}),
    )
    .await
    .unwrap();
    assert_eq!(
        action(&mut c, "stats", serde_json::Value::Null)
            .await
            .unwrap()["tables"],
        serde_json::json!([])
    );

    let r = action(
        &mut c,
        "preload",
        serde_json::json!({"namespace": "ns", "name": "warm"}),
    )
    .await
    .unwrap();
    assert_eq!(
        (&r["version"], &r["cached"], &r["parts"], &r["partsCached"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(true),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{r}"
    );
    let s = action(&mut c, "stats", serde_json::Value::Null)
        .await
        .unwrap();
    let tables = s["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 1);
    assert_eq!(
        (
            tables[0]["namespace"].as_str(),
            tables[0]["name"].as_str(),
            tables[0]["version"].as_u64()
        ),
        (Some("ns"), Some("warm"), Some(1))
    );
    assert_eq!(tables[0]["parts"], serde_json::json!([0]));
    // The first read after a preload is a hit.
    let misses = s["misses"].as_u64().unwrap();
    get(&mut c, "ads1:ns/warm@1").await.unwrap();
    assert_eq!(
        action(&mut c, "stats", serde_json::Value::Null)
            .await
            .unwrap()["misses"]
            .as_u64()
            .unwrap(),
        misses
    );
    let err = action(
        &mut c,
        "preload",
        serde_json::json!({"namespace": "ns", "name": "cold"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    node.stop().await;
}

#[tokio::test]
async fn tls_serves_clients_that_trust_its_certificate() {
    // A CA and a server certificate it signs, for 127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f);
    std::fs::write(p("ext.cnf"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl is needed to make test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    let (cert, key) = (p("tls.crt"), p("tls.key"));
    let node = TestNode::start(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let uri = format!("grpc+tls://127.0.0.1:{}", node.running().grpc_addr.port());
    let ca = std::fs::read(p("ca.crt")).unwrap();
    let mut client = flight_node::client::NodeClient::connect_with(&uri, None, Some(&ca))
        .await
        .unwrap();
    let id = flight_node::name::DatasetId::new("ns", "secure").unwrap();
    let r = client
        .put(&id, schema(), vec![batch(0, 20)], Some("1h"), None)
        .await
        .unwrap();
    assert_eq!(concat(&client.get(&r.ticket).await.unwrap()), batch(0, 20));
    // A plaintext client cannot talk to the TLS port.
    let plain = flight_node::client::NodeClient::connect(
        &format!("grpc://127.0.0.1:{}", node.running().grpc_addr.port()),
        None,
    )
    .await;
    if let Ok(mut plain) = plain {
        assert!(plain.get(&r.ticket).await.is_err());
    }
    node.stop().await;
}

/// Uploads whose record batch headers were damaged at random (a seeded run, the seed
/// printed): each is refused with INVALID_ARGUMENT or, where the damage still describes
/// valid data, stored; never a panic, a cancelled call or an internal error, and the node
/// keeps serving.
#[tokio::test]
async fn randomly_damaged_ipc_headers_are_refused_cleanly() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let seed: u64 = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("fault seed: {seed} (rerun with FAULT_SEED={seed})");
    let mut state = seed | 1;
    let mut next = move || {
        // xorshift64*: small, deterministic, good enough to pick bytes.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let clean = encode(Some(descriptor("ns", "damaged")), vec![batch(0, 300)]);
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let mut msgs = clean.clone();
        // The record batch message (after the schema): overwrite 1–4 bytes of its header.
        let target = msgs.len() - 1;
        let mut header = msgs[target].data_header.to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % header.len();
            header[at] = next() as u8;
        }
        msgs[target].data_header = Bytes::from(header);
        let code = match put_raw(&mut c, msgs.into_iter().map(Ok).collect()).await {
            Ok(_) => Code::Ok,
            Err(s) => {
                assert!(
                    matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted),
                    "seed {seed}: a damaged header got {:?}: {}",
                    s.code(),
                    s.message()
                );
                s.code()
            }
        };
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    println!("outcomes: {codes:?}");
    assert!(codes.get("InvalidArgument").copied().unwrap_or(0) > 0);
    // Still serving.
    let p = put(&mut c, descriptor("ns", "after"), vec![batch(0, 3)])
        .await
        .unwrap();
    assert_eq!(
        concat(&get(&mut c, &put_ticket(&p)).await.unwrap()),
        batch(0, 3)
    );
    node.stop().await;
}

/// A client that waits for the DoPut call to be established before it streams anything
/// (arrow-rs's `FlightClient::do_put` fed through a bounded channel) gets its answer.
#[tokio::test]
async fn do_put_answers_its_headers_before_the_upload_is_read() {
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let established = tokio::time::timeout(
        Duration::from_secs(10),
        c.do_put(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await
    .expect("DoPut was not established before the upload was sent");
    let mut results = established.unwrap();
    for m in encode(Some(descriptor("ns", "channel")), vec![batch(0, 50)]) {
        tx.send(Ok(m)).await.unwrap();
    }
    drop(tx);
    let put: serde_json::Value =
        serde_json::from_slice(&results.next().await.unwrap().unwrap().app_metadata).unwrap();
    assert_eq!(put["version"], 1);
    assert_eq!(
        concat(&get(&mut c, &put_ticket(&put)).await.unwrap()),
        batch(0, 50)
    );
    node.stop().await;
}

/// Every call is counted once with the code its client saw: Flight calls from their
/// `grpc-status` (a DoGet when its stream ends), HTTP dataset requests from their status.
#[tokio::test]
async fn requests_are_counted_once_by_method_and_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start(|_| {}).await;
    let mut c = node.client().await;
    let put = put(&mut c, descriptor("ns", "counted"), vec![batch(0, 100)])
        .await
        .unwrap();
    get(&mut c, &put_ticket(&put)).await.unwrap();
    get(&mut c, &put_ticket(&put)).await.unwrap();
    let elsewhere = put_ticket(&put).replace("/counted@", "/nothing@");
    let missing = get(&mut c, &elsewhere).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let mut http = tokio::net::TcpStream::connect(node.running().http_addr)
        .await
        .unwrap();
    http.write_all(b"GET /v1/datasets/ns/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    let running = node.running();
    let text = running.node.metrics().render(
        &running.node.cache().stats(),
        &running.node.budgets().stats(),
    );
    let count = |method: &str, code: &str| {
        let prefix = format!("flight_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    assert_eq!(count("DoPut", "Ok"), 1.0, "{text}");
    assert_eq!(count("DoGet", "Ok"), 2.0, "{text}");
    assert_eq!(count("DoGet", "NotFound"), 1.0, "{text}");
    assert_eq!(count("HttpExport", "NotFound"), 1.0, "{text}");
    node.stop().await;
}
