"""Multi-endpoint parallel downloads, location fallback and node restarts."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import trinity_flight as tf


def ten_mb_frame(rows: int = 320_000) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype="int64"),
            "x": rng.random(rows),
            "y": rng.integers(0, 1000, rows).astype("int32"),
            "ts": pd.date_range("2024-01-01", periods=rows, freq="s", tz="UTC"),
            "cat": pd.Categorical(rng.choice(["a", "b", "c", "d"], rows)),
            "n": pd.array(np.where(np.arange(rows) % 3 == 0, None, np.arange(rows)), dtype="Int64"),
        }
    )


def test_multi_endpoint_parallel_download(client: tf.Client, monkeypatch) -> None:
    df = ten_mb_frame()
    table = pa.Table.from_pandas(df)
    assert table.nbytes > 8 * 1024 * 1024
    ticket = client.upload_dataframe(df, "big")

    fi = client._conn.get_flight_info(fl.FlightDescriptor.for_path("default", "big"))
    # One endpoint per part; the node cuts parts at batch boundaries (4 MiB batches here).
    assert len(fi.endpoints) >= 3, "the node (--part-size 1MiB) should list one endpoint per part"

    threads = set()
    real = tf.Client._fetch

    def tracking(self, endpoint):
        threads.add(threading.get_ident())
        return real(self, endpoint)

    monkeypatch.setattr(tf.Client, "_fetch", tracking)
    got = client.download_dataframe(ticket)
    pd.testing.assert_frame_equal(got, df)
    assert len(threads) > 1, "endpoints should be fetched by several threads"


def test_location_fallback(client: tf.Client, node) -> None:
    ticket = client.upload_table(pa.table({"a": [1, 2, 3]}), "fallback")
    dead = f"grpc://127.0.0.1:{node.http_port + 0}"  # an HTTP port: not a Flight server
    unreachable = "grpc://127.0.0.1:1"
    endpoint = fl.FlightEndpoint(ticket.to_bytes(), [unreachable, dead, "arrow-flight-reuse-connection://?"])
    assert client._fetch(endpoint).to_pydict() == {"a": [1, 2, 3]}
    # Without the reuse location the connection in use is still the last resort.
    endpoint = fl.FlightEndpoint(ticket.to_bytes(), [unreachable])
    assert client._fetch(endpoint).num_rows == 3
    # A working foreign location is used as-is.
    endpoint = fl.FlightEndpoint(ticket.to_bytes(), [node.uri.replace("127.0.0.1", "localhost")])
    assert client._fetch(endpoint).num_rows == 3


def test_part_ticket_downloads_one_part(node) -> None:
    client = tf.Client(node.uri, namespace="default", batch_bytes=512 * 1024)
    df = ten_mb_frame(100_000)
    ticket = client.upload_dataframe(df, "parts", index=False)
    fi = client._conn.get_flight_info(fl.FlightDescriptor.for_path("default", "parts"))
    first = tf.Ticket(fi.endpoints[0].ticket.ticket)
    assert first.part == 0 and first.version == ticket.version
    part = client.download_table(first)
    assert 0 < part.num_rows < len(df)
    assert len(fi.endpoints) >= 3
    pd.testing.assert_frame_equal(client.download_dataframe(ticket), df)
    client.close()


def test_restart_between_upload_and_download(start_node) -> None:
    node = start_node("--part-size", "1MiB")
    with tf.Client(node.uri, namespace="default", retries=6, retry_backoff=0.1) as c:
        big = pa.table({"id": np.arange(600_000), "x": np.random.default_rng(0).random(600_000)})
        small = pa.table({"a": [1, 2, 3], "s": ["x", None, "z"]})
        t_big = c.upload_table(big, "restart-big")
        t_small = c.upload_table(small, "restart-small")
        node.stop()
        node.start()  # same ports, same storage directory, empty memory
        # The same client reconnects; data comes back from storage.
        assert c.download_table(t_small).equals(small)
        assert c.download_table(t_big).equals(big)
    with tf.Client(node.uri, namespace="default") as fresh:
        assert fresh.download_table(t_small).equals(small)


def test_restart_keeps_dataframes(start_node) -> None:
    node = start_node("--part-size", "1MiB")
    with tf.Client(node.uri, namespace="default", retries=6, retry_backoff=0.1) as c:
        df = ten_mb_frame(50_000)
        small = pd.DataFrame(
            {
                "a": [1, 2, 3],
                # Unused categories and their order survive the Parquet copy too.
                "level": pd.Categorical(["high", "low", "high"], categories=["low", "mid", "high"], ordered=True),
                "code": pd.Categorical([30, 10, 30], categories=[30, 20, 10]),
            },
            index=pd.Index(["x", "y", "z"], name="k"),
        )
        t_big = c.upload_dataframe(df, "restart-big")
        t_small = c.upload_dataframe(small, "restart-small")
        node.stop()
        node.start()
        got = c.download_dataframe(t_small)
        pd.testing.assert_frame_equal(got, small)
        assert got["level"].max() == "high" and got["level"].min() == "low"
        pd.testing.assert_frame_equal(c.download_dataframe(t_big), df)


def test_unavailable_is_retried_until_the_node_is_back(start_node) -> None:
    node = start_node()
    with tf.Client(node.uri, namespace="default", retries=8, retry_backoff=0.2) as c:
        t = c.upload_table(pa.table({"a": [1]}), "comes-back")
        node.stop()
        timer = threading.Timer(0.5, node.start)
        timer.start()
        try:
            assert c.download_table(t).to_pydict() == {"a": [1]}
        finally:
            timer.join()


def signing_node(start_node, tmp_path):
    """A node that signs tickets, with 1 MiB parts."""
    key = tmp_path / "ticket.key"
    key.write_text("0123456789abcdef0123456789abcdef")
    return start_node("--ticket-key-file", str(key), "--part-size", "1MiB")


def test_signed_tickets(start_node, tmp_path) -> None:
    node = signing_node(start_node, tmp_path)
    with tf.Client(node.uri, namespace="default", batch_bytes=256 * 1024) as c:
        df = ten_mb_frame(40_000)
        t1 = c.upload_dataframe(df, "signed")
        assert t1.signature is not None and t1.startswith("ads1:default/signed@1~")
        t2 = c.upload_dataframe(df.head(10), "signed")
        # Latest version: signed part tickets from GetFlightInfo; older version: one DoGet.
        pd.testing.assert_frame_equal(c.download_dataframe(t2), df.head(10))
        pd.testing.assert_frame_equal(c.download_dataframe(t1), df)
        with pytest.raises(tf.InvalidRequest, match="signature"):
            c.download_table(t1.replace("@1~", "@2~"))
        with pytest.raises(tf.InvalidRequest, match="not signed"):
            c.download_table(tf.Ticket.build("default", "signed", 1))


def test_pool_owner_location_first_then_fallback(tmp_path, node_class) -> None:
    """Two nodes over one storage: GetFlightInfo lists the owner first; when the owner is
    down, the client falls back to the connection in use."""
    shared = tmp_path / "shared"
    peers = tmp_path / "peers.yaml"
    a = node_class(tmp_path / "a")
    b = node_class(tmp_path / "b")
    for n in (a, b):
        n.storage = shared
        shared.mkdir(exist_ok=True)
    # Each node binds its ports once (the peers file names them), then runs with the peers.
    for n in (a, b):
        n.start()
        n.stop()
    peers.write_text(f"peers: [{a.uri}, {b.uri}]\n")
    for n in (a, b):
        n.extra_args = ["--part-size", "1MiB", "--advertise-uri", n.uri, "--peers-file", str(peers)]
        n.start()
    try:
        with tf.Client(a.uri, namespace="default", batch_bytes=512 * 1024, retries=1, retry_backoff=0.05) as c:
            # Find a dataset name owned by node b.
            for i in range(50):
                name = f"pooled-{i}"
                t = c.upload_table(pa.table({"i": np.arange(200_000)}), name)
                fi = c._conn.get_flight_info(fl.FlightDescriptor.for_path("default", name))
                first = fi.endpoints[0].locations[0].uri.decode()
                if first == b.uri:
                    break
            else:
                pytest.fail("no dataset placed on node b")
            assert len(fi.endpoints) > 1
            assert [loc.uri.decode() for loc in fi.endpoints[0].locations][-1].startswith("arrow-flight-reuse")
            assert c.download_table(t).num_rows == 200_000
            assert b.uri in c._connections  # fetched from the owner
            b.stop()
            assert c.download_table(t).num_rows == 200_000  # owner down: via node a
    finally:
        a.stop()
        b.stop()


def test_columns_and_limit_read_only_what_is_asked(start_node, tmp_path) -> None:
    node = signing_node(start_node, tmp_path)
    with tf.Client(node.uri, namespace="default", batch_bytes=256 * 1024) as c:
        df = ten_mb_frame(40_000)
        t = c.upload_dataframe(df, "wide")
        cols = list(df.columns[-2:])
        got = c.download_dataframe(t, columns=cols)
        pd.testing.assert_frame_equal(got, df[cols])
        pd.testing.assert_frame_equal(c.download_dataframe(t, limit=7), df.head(7))
        got = c.download_dataframe(t, columns=cols[::-1], limit=30_000)
        pd.testing.assert_frame_equal(got, df[cols[::-1]].head(30_000))
        assert c.download_table(t, limit=0).num_rows == 0
        # A selected ticket to pass on, signed by the node; narrowing it again works,
        # widening it does not.
        preview = c.select(t, columns=cols, limit=5)
        assert preview.columns == cols and preview.limit == 5 and preview.signature
        pd.testing.assert_frame_equal(c.download_dataframe(preview), df[cols].head(5))
        pd.testing.assert_frame_equal(
            c.download_dataframe(preview, columns=cols[:1]), df[cols[:1]].head(5)
        )
        with pytest.raises(tf.InvalidRequest, match="not among the ticket's columns"):
            c.download_table(preview, columns=[df.columns[0]])
        with pytest.raises(tf.InvalidRequest, match="no column"):
            c.download_table(t, columns=["nope"])
        with pytest.raises(tf.InvalidRequest, match="limit"):
            c.download_table(t, limit=-1)
        with pytest.raises(TypeError):
            c.download_table(t, columns="a")  # type: ignore[arg-type]


def test_unsigned_selected_tickets_round_trip() -> None:
    t = tf.Ticket.build("ns", "d", 3, columns=["a b", "x~y,z"], limit=10)
    assert t == "ads1:ns/d@3?columns=a%20b,x%7Ey%2Cz&limit=10"
    back = tf.Ticket(str(t))
    assert (back.columns, back.limit, back.part) == (["a b", "x~y,z"], 10, None)
    assert tf.Ticket("ads1:ns/d@3#2?limit=5~abc").limit == 5
    for bad in ["ads1:ns/d@3?limit=x", "ads1:ns/d@3?rows=1", "ads1:ns/d@3?columns=a,,b"]:
        with pytest.raises(tf.InvalidRequest):
            tf.Ticket(bad)
