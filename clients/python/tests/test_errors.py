"""Errors from a real node become clear exceptions that keep the node's message."""

from __future__ import annotations

import time

import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

import trinity_flight as tf


def test_missing_ticket_is_dataset_not_found(client: tf.Client) -> None:
    with pytest.raises(tf.DatasetNotFound) as e:
        client.download_dataframe("ads1:default/no-such-dataset@1")
    assert e.value.code == "NOT_FOUND"
    assert "no-such-dataset" in str(e.value)
    assert "gRPC client debug context" not in str(e.value)
    client.upload_table(pa.table({"a": [1]}), "one-version")
    with pytest.raises(tf.DatasetNotFound, match="version 99"):
        client.download_table("ads1:default/one-version@99")
    with pytest.raises(tf.DatasetNotFound):
        client.info("no-such-dataset")
    with pytest.raises(LookupError):
        client.download_table("ads1:default/no-such-dataset@1#0")


def test_malformed_input_is_invalid_request(client: tf.Client) -> None:
    with pytest.raises(tf.InvalidRequest, match="malformed ticket"):
        client.download_table("not-a-ticket")
    with pytest.raises(tf.InvalidRequest, match="dataset name"):
        client.upload_table(pa.table({"a": [1]}), "Not_A_Label")
    with pytest.raises(tf.InvalidRequest, match="TTL"):
        client.upload_table(pa.table({"a": [1]}), "bad-ttl", ttl="forever")
    with pytest.raises(tf.InvalidRequest, match="unknown data contract"):
        client.upload_table(pa.table({"a": [1]}), "bad-contract", contract="nope")


def test_contract_violation(client: tf.Client) -> None:
    ok = pd.DataFrame({"id": [1, 2], "amount": [1.5, 2.5]})
    t = client.upload_dataframe(ok, "sales", contract="sales-v1", index=False)
    assert t.version >= 1
    with pytest.raises(tf.ContractViolation) as e:
        client.upload_dataframe(pd.DataFrame({"amount": [1.0]}), "sales", contract="sales-v1", index=False)
    assert "data contract violation" in str(e.value)
    assert isinstance(e.value, tf.InvalidRequest)
    assert client.latest("sales") == t


def test_wrong_token_is_unauthorized(auth_node) -> None:
    with tf.Client(auth_node.uri, token="wrong-token", namespace="default", retries=0) as c:
        with pytest.raises(tf.Unauthorized) as e:
            c.upload_table(pa.table({"a": [1]}), "x")
        assert e.value.code == "UNAUTHENTICATED"
        assert "unknown bearer token" in str(e.value)
        with pytest.raises(tf.Unauthorized):
            c.download_table("ads1:default/x@1")
    with tf.Client(auth_node.uri, namespace="default", retries=0) as anonymous:
        anonymous.token = None
        with pytest.raises(tf.Unauthorized, match="missing bearer token"):
            anonymous.download_table("ads1:default/x@1")


def test_tokens_are_bound_to_namespaces(auth_node, monkeypatch) -> None:
    with tf.Client(auth_node.uri, token="analytics-token", namespace="analytics") as c:
        t = c.upload_dataframe(pd.DataFrame({"a": [1]}), "mine")
        assert c.download_dataframe(t)["a"].tolist() == [1]
        with pytest.raises(tf.Unauthorized) as e:
            c.upload_dataframe(pd.DataFrame({"a": [1]}), "theirs", namespace="default")
        assert e.value.code == "PERMISSION_DENIED"
        assert "namespace" in str(e.value)
    # The module-level functions take the token from FLIGHT_TOKEN.
    monkeypatch.setenv("FLIGHT_URI", auth_node.uri)
    monkeypatch.setenv("FLIGHT_TOKEN", "admin-token")
    monkeypatch.setenv("FLIGHT_NAMESPACE", "default")
    assert tf.download_dataframe(t)["a"].tolist() == [1]
    monkeypatch.setenv("FLIGHT_TOKEN", "nope")
    with pytest.raises(tf.Unauthorized):
        tf.download_dataframe(t)


def test_limits_are_limit_exceeded(start_node) -> None:
    node = start_node("--max-upload-size", "1MiB")
    with tf.Client(node.uri, namespace="default", retries=0) as c:
        with pytest.raises(tf.LimitExceeded, match="maximum upload size"):
            c.upload_table(pa.table({"a": pa.array(range(1_000_000), pa.int64())}), "too-big")
        with pytest.raises(tf.DatasetNotFound):
            c.info("too-big")


def test_unreachable_node_is_server_unavailable_after_retries() -> None:
    with tf.Client("grpc://127.0.0.1:1", namespace="default", retries=2, retry_backoff=0.05) as c:
        start = time.monotonic()
        with pytest.raises(tf.ServerUnavailable) as e:
            c.download_table("ads1:default/x@1")
        assert e.value.code == "UNAVAILABLE"
        assert time.monotonic() - start >= 0.05
        with pytest.raises(ConnectionError):
            c.upload_table(pa.table({"a": [1]}), "x")


def test_large_tables_are_split_below_the_message_limit(start_node) -> None:
    node = start_node("--max-message-size", "1MiB")
    table = pa.table({"a": pa.array(range(1_000_000), pa.int64()), "b": pa.array([1.5] * 1_000_000)})
    assert table.nbytes > 8 * (1 << 20) and table.column("a").num_chunks == 1
    with tf.Client(node.uri, namespace="default", retries=0) as raw:
        # One 16 MB message is refused by the node ...
        with pytest.raises(tf.LimitExceeded, match="message"):
            writer, reader = raw._conn.do_put(
                flight.FlightDescriptor.for_path("default", "one-message"),
                table.schema,
            )
            try:
                writer.write_table(table)
                writer.done_writing()
                reader.read()
            finally:
                try:
                    writer.close()
                except pa.ArrowException as e:
                    raise tf.errors.translate(e) from e
    # ... while the client sends batches of `batch_bytes`.
    with tf.Client(node.uri, namespace="default", batch_bytes=512 * 1024) as c:
        t = c.upload_table(table, "split")
        assert c.download_table(t).equals(table)

