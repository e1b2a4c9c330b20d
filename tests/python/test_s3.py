"""The upload / download / evict / reload flow against a real S3-compatible server process
(moto_server), with `s3://bucket/prefix` storage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import conftest
from conftest import S3_ENV, expect_flight_error, get_table, http_request, put_table


def s3_node(node, moto, *flags):
    endpoint, bucket, _ = moto
    return node("--storage-endpoint", endpoint, "--allow-http", *flags,
                storage_url=f"s3://{bucket}/pool", env=S3_ENV)


def keys(s3, bucket, prefix="pool/"):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


def test_s3_upload_download_evict_reload(node, moto):
    endpoint, bucket, s3 = moto
    n = s3_node(node, moto, "--part-size", "256KiB")
    c = n.client()
    rng = np.random.default_rng(3)
    table = pa.table({"id": pa.array(np.arange(100_000, dtype=np.int64)),
                      "x": pa.array(rng.normal(size=100_000)),
                      "s": pa.array([f"v{i % 97}" for i in range(100_000)])})
    res = put_table(c, ("analytics", "ons3"), table, max_chunksize=10_000)
    assert res["version"] == 1 and res["rows"] == 100_000
    stored = keys(s3, bucket)
    assert "pool/analytics/ons3/v1.manifest.json" in stored
    parts = [k for k in stored if k.startswith("pool/analytics/ons3/parts/")]
    assert len(parts) >= 2 and all(k.endswith(".parquet") for k in parts)
    manifest = json.loads(s3.get_object(Bucket=bucket,
                                        Key="pool/analytics/ons3/v1.manifest.json")["Body"].read())
    assert manifest["rows"] == 100_000 and len(manifest["parts"]) == len(parts)

    assert get_table(c, res["ticket"]).equals(table)
    info = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "ons3"))
    assert info.total_records == 100_000 and len(info.endpoints) == len(parts)

    before = n.stats(c)
    assert json.loads(n.action(c, "evict", {"namespace": "analytics", "name": "ons3"})[0])["evicted"] == 1
    assert get_table(c, res["ticket"]).combine_chunks().equals(table.combine_chunks())
    # One miss per part: the cache holds parts.
    assert n.stats(c)["misses"] == before["misses"] + len(parts)
    parts_read = [get_table(c, ep.ticket.ticket) for ep in info.endpoints]
    assert pa.concat_tables(parts_read).combine_chunks().equals(table.combine_chunks())

    # A second version, then a restarted node (nothing in memory) reads both from S3.
    t2 = table.slice(0, 10)
    r2 = put_table(c, ("analytics", "ons3"), t2)
    assert r2["version"] == 2
    n.restart()
    c = n.client()
    assert get_table(c, res["ticket"]).combine_chunks().equals(table.combine_chunks())
    assert get_table(c, r2["ticket"]).equals(t2)
    listed = [tuple(p.decode() for p in i.descriptor.path) for i in c.list_flights(b"analytics")]
    assert listed == [("analytics", "ons3")]

    # HTTP upload and load from an object placed in the bucket.
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/web", method="POST",
                                  data=b"a,b\n1,x\n2,y\n")
    assert status == 201, raw
    s3.put_object(Bucket=bucket, Key="pool/analytics/incoming/data.csv", Body=b"k,v\n1,2\n3,4\n")
    loaded = json.loads(n.action(c, "load", {"namespace": "analytics", "name": "loaded",
                                             "source": "analytics/incoming/data.csv"})[0])
    assert get_table(c, loaded["ticket"]).to_pydict() == {"k": [1, 3], "v": [2, 4]}

    # Delete leaves only tombstones (they keep the numbers) and removes the parts.
    deleted = json.loads(n.action(c, "delete", {"namespace": "analytics", "name": "ons3"})[0])
    assert sorted(deleted["deleted"]) == [1, 2]
    left = keys(s3, bucket, "pool/analytics/ons3/")
    assert left == ["pool/analytics/ons3/v1.manifest.json", "pool/analytics/ons3/v2.manifest.json"]
    for k in left:
        record = json.loads(s3.get_object(Bucket=bucket, Key=k)["Body"].read())
        assert record["format"] == "arrow.trinity.io/tombstone-v1"
    expect_flight_error(pa.ArrowKeyError, get_table, c, res["ticket"])


def test_s3_missing_bucket_is_not_ready(node, moto):
    """With a bucket that does not exist the node does not become ready (readyz checks the
    storage), so a misconfigured pod never receives traffic."""
    endpoint, _, _ = moto
    with pytest.raises(RuntimeError, match="not ready|exited"):
        old = conftest.START_TIMEOUT
        conftest.START_TIMEOUT = 4.0
        try:
            node("--storage-endpoint", endpoint, "--allow-http",
                 storage_url="s3://no-such-bucket/pool", env=S3_ENV)
        finally:
            conftest.START_TIMEOUT = old
