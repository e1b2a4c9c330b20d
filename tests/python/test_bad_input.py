"""Bad input, each answered with the right gRPC code and message, after which the node
still serves: malformed tickets, traversal names, schema drift, oversized messages and
uploads, truncated (cancelled) uploads, and floods of one-row batches."""

from __future__ import annotations

import os
import threading
import time

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import (assert_state_returns_to, expect_flight_error, get_table, put_table,
                      stored_state)
from rawflight import RawFlight, flight_data, ipc_messages, upload_messages


def assert_serves(n, tag: str = "alive") -> None:
    """The process is up and a fresh round trip works."""
    assert n.alive(), n.log_tail()
    c = n.client()
    table = pa.table({"x": pa.array(np.arange(100, dtype=np.int64)), "tag": [tag] * 100})
    res = put_table(c, ("default", "canary"), table)
    assert get_table(c, res["ticket"]).equals(table)


def no_versions(n, ns, name):
    versions, files = stored_state(n.storage_dir, ns, name)
    return versions == [] and files == []


MALFORMED_TICKETS = {
    "empty": b"",
    "garbage": b"garbage",
    "foreign-tag": b"ads2:analytics/sales@1",
    "no-version": b"ads1:analytics/sales",
    "version-zero": b"ads1:analytics/sales@0",
    "version-text": b"ads1:analytics/sales@latest",
    "negative-version": b"ads1:analytics/sales@-1",
    "traversal": b"ads1:../etc/passwd@1",
    "upper-case": b"ads1:Analytics/sales@1",
    "three-parts": b"ads1:a/b/c@1",
    "bad-part": b"ads1:analytics/sales@1#x",
    "signed-without-key": b"ads1:analytics/sales@1~AAAA",
    "nul-bytes": b"ads1:analytics/sales@1\x00",
    "random-bytes": bytes(np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8)),
    "not-utf8": b"ads1:\xff\xfe/x@1",
    "10kb": b"ads1:" + b"a" * 10_240 + b"/x@1",
}


@pytest.mark.parametrize("ticket", list(MALFORMED_TICKETS.values()), ids=list(MALFORMED_TICKETS))
def test_malformed_tickets_are_invalid_argument(node, ticket):
    n = node()
    c = n.client()
    put_table(c, ("analytics", "sales"), pa.table({"x": [1]}))
    err = expect_flight_error(pa.ArrowInvalid, get_table, c, ticket,
                              match="returned invalid argument error")
    msg = str(err).lower()
    assert "ticket" in msg or "dns-1123 label" in msg, msg
    assert_serves(n)


def test_unknown_dataset_version_and_part_are_not_found(node):
    n = node()
    c = n.client()
    res = put_table(c, ("analytics", "sales"), pa.table({"x": [1]}))
    for ticket in ("ads1:analytics/sales@2", "ads1:analytics/other@1", "ads1:nobody/sales@1",
                   res["ticket"] + "#1"):
        expect_flight_error(pa.ArrowKeyError, get_table, c, ticket,
                            match="returned not found error")
    assert_serves(n)


BAD_PATHS = {
    "dotdot-ns": ("..", "x"),
    "dotdot-name": ("analytics", ".."),
    "dot": ("analytics", "."),
    "upper": ("A",),
    "slash": ("a/b",),
    "slash-name": ("analytics", "x/../../y"),
    "empty": ("",),
    "too-long": ("a" * 64,),
    "three-elements": ("a", "b", "c"),
    "leading-dash": ("-x",),
    "underscore": ("my_data",),
    "space": ("my data",),
    "absolute": ("/etc",),
}


@pytest.mark.parametrize("path", list(BAD_PATHS.values()), ids=list(BAD_PATHS))
def test_bad_names_in_descriptors_are_invalid_argument(node, path):
    n = node()
    c = n.client()
    desc = flight.FlightDescriptor.for_path(*path)
    expect_flight_error(pa.ArrowInvalid, c.get_flight_info, desc,
                        match="returned invalid argument error")
    expect_flight_error((pa.ArrowInvalid, OSError), c.get_schema, desc,
                        match="returned invalid argument error")
    expect_flight_error((pa.ArrowInvalid, OSError), put_table, c, path, pa.table({"x": [1]}),
                        match="returned invalid argument error")
    # Nothing was written anywhere: the storage dir is empty and nothing escaped it.
    assert [p for p in n.storage_dir.rglob("*") if p.is_file()] == []
    assert not (n.storage_dir.parent / "x").exists() and not (n.storage_dir.parent / "y").exists()
    assert_serves(n)


def test_command_descriptors_and_bad_action_bodies_are_invalid_argument(node):
    n = node()
    c = n.client()
    expect_flight_error(pa.ArrowInvalid, c.get_flight_info,
                        flight.FlightDescriptor.for_command(b"SELECT 1"), match="path")
    for kind, body in (("delete", b"not json"), ("evict", b"{}"), ("load", b"[]"),
                       ("renew", b'{"ticket": "garbage", "ttl": "1h"}'),
                       ("delete", b'{"namespace": "..", "name": "x"}'),
                       ("RenewFlightEndpoint", b"\xff\xff\xff")):
        expect_flight_error(pa.ArrowInvalid, n.action, c, kind, body,
                            match="returned invalid argument error")
    expect_flight_error(pa.ArrowInvalid, lambda: list(c.list_flights(b"Not A Namespace")))
    assert_serves(n)


def test_pyarrow_refuses_schema_drift_client_side(node):
    """pyarrow's writer never sends a second schema: drift is caught in the client. The
    server side is tested with raw streams below."""
    n = node()
    c = n.client()
    writer, _ = c.do_put(flight.FlightDescriptor.for_path("analytics", "drift"),
                         pa.schema([("a", pa.int64())]))
    writer.write_batch(pa.record_batch({"a": [1]}))
    with pytest.raises(pa.ArrowInvalid, match="different schema"):
        writer.write_batch(pa.record_batch({"a": ["text"]}))
    writer.close()


def test_schema_drift_mid_stream_raw(node):
    n = node("--part-size", "1KiB")  # the first batch is written as a part before the drift
    raw = RawFlight(n.location)
    try:
        first = pa.table({"a": pa.array(np.arange(1000, dtype=np.int64))})
        second = pa.table({"a": pa.array([f"s{i}" for i in range(10)])})
        messages = upload_messages(("analytics", "drift"), first)
        messages += [flight_data(h, b) for h, b in ipc_messages(second)]
        with pytest.raises(grpc.RpcError) as info:
            raw.do_put(messages)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "schema" in info.value.details()

        # A batch before any schema.
        schema_msg, batch_msg = ipc_messages(first)[:2]
        desc = flight.FlightDescriptor.for_path("analytics", "drift")
        with pytest.raises(grpc.RpcError) as info:
            raw.do_put([flight_data(batch_msg[0], batch_msg[1], desc)])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Garbage where an IPC header belongs.
        with pytest.raises(grpc.RpcError) as info:
            raw.do_put([flight_data(schema_msg[0], b"", desc), flight_data(b"\x01\x02garbage", b"x")])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # No descriptor on the first message, and an empty stream.
        with pytest.raises(grpc.RpcError) as info:
            raw.do_put([flight_data(schema_msg[0])])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "descriptor" in info.value.details()
        with pytest.raises(grpc.RpcError) as info:
            raw.do_put([])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # A well-formed raw stream is accepted: the encoder above is right.
        ok = raw.do_put(upload_messages(("analytics", "rawok"), first))
        assert b'"version":1' in ok[0]
    finally:
        raw.close()
    assert_state_returns_to(n.storage_dir, "analytics", "drift", ([], []))
    c = n.client()
    assert get_table(c, "ads1:analytics/rawok@1").equals(first)
    expect_flight_error(pa.ArrowKeyError, c.get_flight_info,
                        flight.FlightDescriptor.for_path("analytics", "drift"))
    assert_serves(n)


def test_oversized_message_is_resource_exhausted_with_a_hint(node):
    n = node("--max-message-size", "1MiB")
    c = n.client()
    big = pa.table({"v": pa.array(np.arange(300_000, dtype=np.int64))})  # one 2.4 MB batch
    err = expect_flight_error((pa.ArrowInvalid, OSError), put_table, c, ("analytics", "big"), big,
                              match="resource exhausted")
    assert "max_chunksize" in str(err) and "--max-message-size" in str(err)
    assert no_versions(n, "analytics", "big")
    # The hint works: the same table in smaller batches is accepted and reads back (DoGet
    # keeps its messages under the limit too).
    res = put_table(c, ("analytics", "big"), big, max_chunksize=50_000)
    assert get_table(c, res["ticket"]).equals(big)
    assert_serves(n)


def test_upload_above_max_upload_size(node):
    n = node("--max-upload-size", "256KiB", "--part-size", "64KiB")
    c = n.client()
    table = pa.table({"v": pa.array(np.arange(100_000, dtype=np.int64))})  # 800 KB
    expect_flight_error((pa.ArrowInvalid, OSError), put_table, c, ("analytics", "huge"), table,
                        max_chunksize=5_000, match="maximum upload size")
    assert_state_returns_to(n.storage_dir, "analytics", "huge", ([], []))
    small = table.slice(0, 10_000)
    assert get_table(c, put_table(c, ("analytics", "huge"), small)["ticket"]).equals(small)
    assert_serves(n)


def test_truncated_upload_cancelled_by_the_client_commits_nothing(node):
    n = node("--part-size", "16KiB")
    raw = RawFlight(n.location)
    table = pa.table({"v": pa.array(np.arange(50_000, dtype=np.int64))})
    messages = upload_messages(("analytics", "cut"), table, max_chunksize=2_000)
    sent_half = threading.Event()

    def feed():
        for i, m in enumerate(messages):
            if i == len(messages) // 2:
                sent_half.set()
                time.sleep(30)  # never finishes: the call is cancelled meanwhile
            yield m

    call = raw.start_put(feed())
    assert sent_half.wait(10)
    # Let the server write some parts before the client goes away.
    deadline = time.monotonic() + 5
    while not list((n.storage_dir / "analytics" / "cut").rglob("*.parquet")):
        assert time.monotonic() < deadline, "the server wrote no part of the half upload"
        time.sleep(0.02)
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    raw.close()
    assert_state_returns_to(n.storage_dir, "analytics", "cut", ([], []))
    expect_flight_error(pa.ArrowKeyError, n.client().get_flight_info,
                        flight.FlightDescriptor.for_path("analytics", "cut"))
    assert_serves(n)


def test_client_process_killed_mid_upload_commits_nothing(node, tmp_path):
    """A pyarrow client process that dies half-way (no done_writing, no close)."""
    n = node("--part-size", "16KiB")
    script = tmp_path / "client.py"
    script.write_text(f"""
import os, sys, numpy as np, pyarrow as pa, pyarrow.flight as flight
c = flight.FlightClient({n.location!r})
schema = pa.schema([("v", pa.int64())])
w, r = c.do_put(flight.FlightDescriptor.for_path("analytics", "killed"), schema)
for i in range(20):
    w.write_batch(pa.record_batch([pa.array(np.arange(i * 2000, (i + 1) * 2000))], schema=schema))
print("written", flush=True)
os._exit(3)
""")
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60)
    assert proc.returncode == 3 and b"written" in proc.stdout, proc.stderr
    assert_state_returns_to(n.storage_dir, "analytics", "killed", ([], []))
    assert_serves(n)


def test_flood_of_one_row_batches_is_accepted(node):
    n = node()
    c = n.client()
    table = pa.table({"i": pa.array(np.arange(20_000, dtype=np.int64))})
    res = put_table(c, ("analytics", "flood"), table, max_chunksize=1)
    assert res["rows"] == 20_000
    got = get_table(c, res["ticket"])
    assert got.equals(table)
    assert got.num_rows == 20_000
    # Coalesced on the way in: DoGet does not answer 20,000 messages.
    reader = c.do_get(flight.Ticket(res["ticket"].encode()))
    chunks = sum(1 for _ in reader)
    assert chunks < 100, chunks
    assert_serves(n)


def test_flood_above_max_upload_batches_is_resource_exhausted(node):
    n = node("--max-upload-batches", "1000", "--part-size", "4KiB")
    c = n.client()
    table = pa.table({"i": pa.array(np.arange(20_000, dtype=np.int64))})
    err = expect_flight_error((pa.ArrowInvalid, OSError), put_table, c, ("analytics", "flood"),
                              table, max_chunksize=1, match="resource exhausted")
    assert "1000" in str(err)
    assert_state_returns_to(n.storage_dir, "analytics", "flood", ([], []))
    # Exactly at the limit is fine.
    res = put_table(c, ("analytics", "flood"), table.slice(0, 1000), max_chunksize=1)
    assert res["rows"] == 1000
    assert_serves(n)
