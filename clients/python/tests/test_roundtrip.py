"""DataFrame and table round trips through a real node."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import trinity_flight as tf


def many_dtypes(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    with_nulls = lambda arr, dtype: pd.array([None if i % 7 == 0 else v for i, v in enumerate(arr)], dtype=dtype)
    return pd.DataFrame(
        {
            "i8": rng.integers(-100, 100, n).astype("int8"),
            "i16": rng.integers(-1000, 1000, n).astype("int16"),
            "i32": rng.integers(-(2**31), 2**31 - 1, n).astype("int32"),
            "i64": rng.integers(-(2**62), 2**62, n),
            "u8": rng.integers(0, 255, n).astype("uint8"),
            "u64": rng.integers(0, 2**63, n).astype("uint64"),
            "f32": rng.random(n).astype("float32"),
            "f64": np.where(np.arange(n) % 5 == 0, np.nan, rng.random(n)),
            "bool": rng.random(n) > 0.5,
            "Int64": with_nulls(rng.integers(0, 10**12, n), "Int64"),
            "Int32": with_nulls(rng.integers(0, 1000, n), "Int32"),
            "UInt16": with_nulls(rng.integers(0, 60000, n), "UInt16"),
            "boolean": with_nulls(rng.random(n) > 0.5, "boolean"),
            "Float64": with_nulls(rng.random(n), "Float64"),
            "str": pd.array([None if i % 11 == 0 else f"s{i}-é" for i in range(n)], dtype="str"),
            "string": with_nulls([f"x{i}" for i in range(n)], "string"),
            "ts_naive": pd.date_range("2024-01-01", periods=n, freq="min"),
            "ts_ns_utc": pd.date_range("2024-03-31 00:00", periods=n, freq="37s", tz="UTC").as_unit("ns"),
            "ts_berlin": pd.date_range("2024-03-31 00:00", periods=n, freq="7min", tz="Europe/Berlin"),
            "ts_tokyo_ms": pd.date_range("2020-01-01", periods=n, freq="D", tz="Asia/Tokyo").as_unit("ms"),
            "td": pd.to_timedelta(np.arange(n), unit="s"),
            "cat": pd.Categorical([["red", "green", "blue"][i % 3] if i % 13 else None for i in range(n)]),
            "cat_ordered": pd.Categorical(
                [["low", "mid", "high"][i % 3] for i in range(n)], categories=["low", "mid", "high"], ordered=True
            ),
            "cat_int": pd.Categorical([i % 4 for i in range(n)]),
            "date": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)],
            "decimal": [decimal.Decimal(i).scaleb(-2) for i in range(n)],
            "bytes": [bytes([i % 256]) * (i % 5) for i in range(n)],
            "list": [list(range(i % 4)) for i in range(n)],
        }
    )


def test_many_dtypes_round_trip(client: tf.Client) -> None:
    df = many_dtypes()
    ticket = client.upload_dataframe(df, "dtypes")
    assert isinstance(ticket, tf.Ticket)
    assert (ticket.namespace, ticket.name) == ("default", "dtypes")
    got = client.download_dataframe(ticket)
    assert list(got.dtypes) == list(df.dtypes)
    pd.testing.assert_frame_equal(got, df)
    assert str(got["ts_berlin"].dt.tz) == "Europe/Berlin"
    assert got["cat_ordered"].cat.ordered
    assert list(got["cat"].cat.categories) == ["blue", "green", "red"]


def test_index_policy(client: tf.Client) -> None:
    # Default RangeIndex: metadata only, restored.
    df = pd.DataFrame({"a": [1, 2, 3]})
    got = client.download_dataframe(client.upload_dataframe(df, "idx-range"))
    pd.testing.assert_frame_equal(got, df)
    assert list(client.download_table(client.upload_dataframe(df, "idx-range")).column_names) == ["a"]

    # Named / non-default index: stored as a column, restored.
    df = pd.DataFrame({"a": [1, 2, 3]}, index=pd.Index(["x", "y", "z"], name="key"))
    t = client.upload_dataframe(df, "idx-named")
    pd.testing.assert_frame_equal(client.download_dataframe(t), df)
    assert "key" in client.download_table(t).column_names

    # MultiIndex and a tz-aware DatetimeIndex.
    mi = pd.MultiIndex.from_tuples([("a", 1), ("a", 2), ("b", 1)], names=["k1", "k2"])
    df = pd.DataFrame({"v": [0.1, 0.2, 0.3]}, index=mi)
    pd.testing.assert_frame_equal(client.download_dataframe(client.upload_dataframe(df, "idx-multi")), df)
    df = pd.DataFrame({"v": [1, 2]}, index=pd.date_range("2024-01-01", periods=2, tz="UTC", name="at"))
    # The index values and time zone round-trip; its `freq` is not stored (pyarrow does not keep it).
    got = client.download_dataframe(client.upload_dataframe(df, "idx-ts"))
    pd.testing.assert_frame_equal(got, df, check_freq=False)
    assert str(got.index.tz) == "UTC"

    # index=False drops it; index=True keeps even a RangeIndex as a column.
    df = pd.DataFrame({"a": [1, 2]}, index=[10, 20])
    got = client.download_dataframe(client.upload_dataframe(df, "idx-drop", index=False))
    pd.testing.assert_frame_equal(got, df.reset_index(drop=True))
    t = client.upload_dataframe(pd.DataFrame({"a": [1, 2]}), "idx-keep", index=True)
    assert len(client.download_table(t).column_names) == 2


def test_empty_and_sliced_frames(client: tf.Client) -> None:
    df = pd.DataFrame({"a": pd.Series([], dtype="int64"), "s": pd.Series([], dtype="str")})
    got = client.download_dataframe(client.upload_dataframe(df, "empty"))
    assert len(got) == 0 and list(got.columns) == ["a", "s"]
    df = pd.DataFrame({"a": np.arange(100)}).iloc[40:60]
    pd.testing.assert_frame_equal(client.download_dataframe(client.upload_dataframe(df, "sliced")), df)


def test_table_round_trip_and_versions(client: tf.Client) -> None:
    t1 = pa.table({"x": pa.array([1, 2, None], pa.int32()), "y": ["a", "b", "c"]}, metadata={"owner": "team-a"})
    k1 = client.upload_table(t1, "versions", ttl="1h")
    t2 = pa.table({"x": pa.array([9], pa.int32()), "y": ["z"]})
    k2 = client.upload_table(t2.to_batches()[0], "versions")
    assert k2.version == k1.version + 1
    # An older ticket still reads exactly its version.
    got1 = client.download_table(k1)
    assert got1.equals(t1) and got1.schema.metadata == {b"owner": b"team-a"}
    assert client.download_table(k2).equals(t2)
    info = client.info("versions")
    assert (info.version, info.rows, info.ticket) == (k2.version, 1, k2)
    assert client.latest("versions") == k2
    assert client.info("versions").expires_at is None
    assert client.download_table(k1) is not None
    k3 = client.upload_table(t1, "versions", ttl=dt.timedelta(minutes=5))
    assert client.info("versions").expires_at is not None
    assert k3.version == k2.version + 1


def test_dtype_backends(client: tf.Client) -> None:
    t = client.upload_table(pa.table({"i": pa.array([1, None], pa.int64()), "s": ["a", None]}), "backends")
    assert client.download_dataframe(t)["i"].dtype == "float64"  # pandas' default for foreign tables
    assert client.download_dataframe(t, dtype_backend="numpy_nullable")["i"].dtype == "Int64"
    assert isinstance(client.download_dataframe(t, dtype_backend="pyarrow")["i"].dtype, pd.ArrowDtype)
    with pytest.raises(ValueError):
        client.download_dataframe(t, dtype_backend="nope")


def test_module_level_functions_use_the_environment(flight_env, monkeypatch) -> None:
    df = pd.DataFrame({"a": [1, 2, 3], "ts": pd.date_range("2024-01-01", periods=3, tz="UTC")})
    ticket = tf.upload_dataframe(df, "from-env", ttl="6h")
    assert ticket.namespace == "default"
    pd.testing.assert_frame_equal(tf.download_dataframe(str(ticket)), df)
    t = tf.upload_table(pa.table({"a": [1]}), "from-env-table", namespace="analytics")
    assert t.namespace == "analytics"
    assert tf.download_table(t).to_pydict() == {"a": [1]}
    monkeypatch.setenv("FLIGHT_NAMESPACE", "team-b")
    assert tf.upload_table(pa.table({"a": [1]}), "ns-switch").namespace == "team-b"


def test_unconvertible_frame_is_invalid(client: tf.Client) -> None:
    df = pd.DataFrame({"mixed": [1, "a", 2.5]}, dtype=object)
    with pytest.raises(tf.InvalidRequest, match="cannot convert"):
        client.upload_dataframe(df, "mixed")


def test_column_names(client: tf.Client) -> None:
    df = pd.DataFrame({0: [1, 2], 1: ["a", "b"], 2: [True, False]})
    pd.testing.assert_frame_equal(client.download_dataframe(client.upload_dataframe(df, "int-names")), df)
    df = pd.DataFrame({"a": [1], "Ümlaut col": [2]})
    pd.testing.assert_frame_equal(client.download_dataframe(client.upload_dataframe(df, "odd-names")), df)
