//! The conditional requests storage relies on, checked against the real MinIO server that
//! `make test` starts (`tests/minio/minio up`), through object_store as the node uses it:
//!
//! - a create-only put (`If-None-Match: *`, how a manifest commit allocates its version)
//!   of an existing key is refused with 412, also when many writers race for one key;
//! - a conditional rewrite (`If-Match: <etag>`) with a stale ETag is refused with 412 and
//!   succeeds with the current one.
//!
//! Without the server's environment (`MINIO_ENDPOINT`, ...) these tests fail with
//! instructions rather than skipping.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::minio;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

fn opts(mode: PutMode) -> PutOptions {
    PutOptions {
        mode,
        ..Default::default()
    }
}

async fn read(store: &Arc<dyn ObjectStore>, path: &Path) -> Bytes {
    store.get(path).await.unwrap().bytes().await.unwrap()
}

#[tokio::test]
async fn create_only_put_of_an_existing_key_is_refused_with_412() {
    let store = minio().storage().object_store();
    let path = Path::from("ns/name/v1.manifest.json");

    let first = store
        .put_opts(
            &path,
            PutPayload::from_static(b"first"),
            opts(PutMode::Create),
        )
        .await
        .unwrap();
    assert!(
        first.e_tag.is_some(),
        "MinIO answered a put without an ETag"
    );

    let err = store
        .put_opts(
            &path,
            PutPayload::from_static(b"second"),
            opts(PutMode::Create),
        )
        .await
        .unwrap_err();
    let object_store::Error::AlreadyExists { source, .. } = &err else {
        panic!("expected AlreadyExists, got {err:?}");
    };
    // object_store maps the server's 412 Precondition Failed to Precondition and a create-only
    // put's refusal on top of it to AlreadyExists: the inner error shows the status was 412.
    assert!(
        matches!(
            source.downcast_ref::<object_store::Error>(),
            Some(object_store::Error::Precondition { .. })
        ),
        "the refusal was not a 412: {source:?}"
    );
    assert_eq!(read(&store, &path).await, Bytes::from_static(b"first"));
}

#[tokio::test]
async fn conditional_rewrite_needs_the_current_etag() {
    let store = minio().storage().object_store();
    let path = Path::from("ns/name/state.json");

    let v1 = store
        .put(&path, PutPayload::from_static(b"one"))
        .await
        .unwrap();
    let v2 = store
        .put(&path, PutPayload::from_static(b"two"))
        .await
        .unwrap();
    let (stale, current) = (v1.e_tag.unwrap(), v2.e_tag.unwrap());
    assert_ne!(stale, current, "different contents, same ETag");

    let update = |e_tag: &str| {
        opts(PutMode::Update(UpdateVersion {
            e_tag: Some(e_tag.to_string()),
            version: None,
        }))
    };
    let err = store
        .put_opts(&path, PutPayload::from_static(b"three"), update(&stale))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::Precondition { .. }),
        "a rewrite with a stale ETag was not refused with 412: {err:?}"
    );
    assert_eq!(read(&store, &path).await, Bytes::from_static(b"two"));

    let v3 = store
        .put_opts(&path, PutPayload::from_static(b"three"), update(&current))
        .await
        .unwrap();
    assert_eq!(read(&store, &path).await, Bytes::from_static(b"three"));
    assert_ne!(v3.e_tag.unwrap(), current);

    // The ETag that was current is stale now.
    let err = store
        .put_opts(&path, PutPayload::from_static(b"four"), update(&current))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::Precondition { .. }),
        "{err:?}"
    );
}

/// What moto_server gets wrong: many create-only puts of one key at once. Exactly one
/// writer may win each key, and the object holds the winner's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_create_only_puts_have_exactly_one_winner() {
    const KEYS: usize = 8;
    const WRITERS: usize = 12;
    let store = minio().storage().object_store();
    for key in 0..KEYS {
        let path = Path::from(format!("ns/race/v{key}.manifest.json"));
        let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let (store, path, barrier) = (Arc::clone(&store), path.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                let body = format!("writer-{writer}");
                barrier.wait().await;
                let r = store
                    .put_opts(&path, PutPayload::from(body), opts(PutMode::Create))
                    .await;
                (writer, r)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (writer, Ok(_)) => winners.push(writer),
                (_, Err(object_store::Error::AlreadyExists { .. })) => {}
                (writer, Err(e)) => panic!("writer {writer} of {path}: unexpected error {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{path}: winners {winners:?}");
        assert_eq!(
            read(&store, &path).await,
            Bytes::from(format!("writer-{}", winners[0]))
        );
    }
}
