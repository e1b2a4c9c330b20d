"""Consumers and releases through the Python helpers, against a real node."""

from __future__ import annotations

import time

import pandas as pd
import pyarrow as pa
import pytest

import trinity_flight as tf


def wait_gone(client: tf.Client, ticket: str, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            client.download_table(ticket)
        except tf.DatasetNotFound:
            return
        time.sleep(0.1)
    raise AssertionError(f"{ticket} is still readable after {timeout}s")


@pytest.fixture
def grace_client(start_node):  # type: ignore[no-untyped-def]
    node = start_node("--release-grace", "500ms")
    with tf.Client(node.uri, namespace="default", retries=2, retry_backoff=0.05) as c:
        yield c


def test_named_consumers_download_release_as_and_consume(grace_client: tf.Client) -> None:
    df = pd.DataFrame({"x": range(100), "s": [f"v{i}" for i in range(100)]})
    ticket = grace_client.upload_dataframe(df, "features", consumers=["scorer", "reporter"])
    assert grace_client.info("features").pending_consumers == ["scorer", "reporter"]

    # A consumer whose work fails does not release: the version stays for its retry.
    with pytest.raises(RuntimeError):
        with grace_client.consume(ticket, as_="scorer") as got:
            pd.testing.assert_frame_equal(got, df)
            raise RuntimeError("scoring failed")
    assert grace_client.info("features").pending_consumers == ["scorer", "reporter"]
    with grace_client.consume(ticket, as_="scorer") as got:
        pd.testing.assert_frame_equal(got, df)
    assert grace_client.info("features").pending_consumers == ["reporter"]

    # Releasing twice is harmless; a stranger is refused with the declared names.
    assert grace_client.release(ticket, consumer="scorer").pending_consumers == ["reporter"]
    with pytest.raises(tf.InvalidRequest, match="scorer, reporter"):
        grace_client.release(ticket, consumer="auditor")

    got = grace_client.download_dataframe(ticket, release_as="reporter")
    pd.testing.assert_frame_equal(got, df)
    wait_gone(grace_client, ticket)


def test_counted_consumers_and_refusals(grace_client: tf.Client) -> None:
    ticket = grace_client.upload_table(
        pa.table({"a": [1, 2, 3]}),
        "counted",
        consumers=2,
    )
    info = grace_client.release(ticket)
    assert (info.consumers or {}).get("releases") == 1
    assert grace_client.download_table(ticket).num_rows == 3
    grace_client.release(ticket)
    wait_gone(grace_client, ticket)

    plain = grace_client.upload_table(
        pa.table({"a": [1]}), "plain"
    )
    with pytest.raises(tf.InvalidRequest) as e:
        grace_client.release(plain, consumer="scorer")
    assert e.value.code == "FAILED_PRECONDITION"
    with pytest.raises(tf.InvalidRequest, match="invalid consumer"):
        grace_client.upload_table(
            pa.table({"a": [1]}),
            "bad",
            consumers=["Not_A_Label"],
        )


def test_module_level_helpers(start_node, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    node = start_node("--release-grace", "300ms")
    monkeypatch.setenv("FLIGHT_URI", node.uri)
    monkeypatch.setenv("FLIGHT_NAMESPACE", "default")
    monkeypatch.delenv("FLIGHT_TOKEN", raising=False)
    df = pd.DataFrame({"y": [1.5, 2.5]})
    ticket = tf.upload_dataframe(df, "mod", consumers=["one"])
    with tf.consume(ticket, as_="one") as got:
        pd.testing.assert_frame_equal(got, df)
    with tf.Client(node.uri, namespace="default") as c:
        wait_gone(c, ticket)


def test_http_csv_upload_and_load_declare_consumers(start_node) -> None:  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    node = start_node("--release-grace", "300ms")
    url = f"http://127.0.0.1:{node.http_port}/v1/datasets/default/from-csv?consumers=a,b"
    req = urllib.request.Request(url, data=b"x,y\n1,2\n", method="POST",
                                 headers={"Content-Type": "text/csv"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        put = json.loads(resp.read())
    assert put["consumers"]["pending"] == ["a", "b"]
    # The header form, counted.
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}/v1/datasets/default/from-csv-2",
        data=b"x\n1\n", method="POST",
        headers={"Content-Type": "text/csv", "x-flight-consumers": "3"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["consumers"]["count"] == 3
    with tf.Client(node.uri, namespace="default") as c:
        c.release(put["ticket"], consumer="a")
        c.release(put["ticket"], consumer="b")
        wait_gone(c, put["ticket"])
