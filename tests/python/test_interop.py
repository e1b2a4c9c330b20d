"""Interop with pyarrow's own Flight client and pandas against the built binary:
round trips of many dtypes, versions pinned by tickets, every read RPC, every action,
Handshake, the HTTP side port and parallel multi-part downloads."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from conftest import expect_flight_error, get_table, http_request, put_table


def many_dtypes_frame(n: int = 500, seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    floats = rng.normal(size=n)
    floats[::7] = np.nan
    nullable = pd.array(rng.integers(-1000, 1000, size=n), dtype="Int64")
    nullable[::5] = pd.NA
    strings = [f"row-{i}-ünïcødé" if i % 11 else None for i in range(n)]
    return pd.DataFrame({
        "i8": rng.integers(-128, 127, size=n, dtype=np.int8),
        "i32": rng.integers(-2**31, 2**31 - 1, size=n, dtype=np.int32),
        "i64": rng.integers(-2**62, 2**62, size=n, dtype=np.int64),
        "u16": rng.integers(0, 2**16 - 1, size=n, dtype=np.uint16),
        "f32": rng.normal(size=n).astype(np.float32),
        "f64_nan": floats,
        "flag": rng.integers(0, 2, size=n).astype(bool),
        "text": pd.array(strings, dtype="string"),
        "ts_utc": pd.date_range("2024-03-01", periods=n, freq="37min", tz="UTC"),
        "ts_paris": pd.date_range("2024-03-30", periods=n, freq="17min", tz="Europe/Paris"),
        "day": [dt.date(2020, 1, 1) + dt.timedelta(days=i) for i in range(n)],
        "price": [decimal.Decimal(f"{i}.{i % 100:02d}") if i % 13 else None for i in range(n)],
        "colour": pd.Categorical(rng.choice(["red", "green", "blue"], size=n)),
        "maybe": nullable,
    })


def table_from_frame(df: pd.DataFrame) -> pa.Table:
    schema_overrides = {"day": pa.date32(), "price": pa.decimal128(12, 2)}
    fields = []
    for name in df.columns:
        if name in schema_overrides:
            fields.append(pa.field(name, schema_overrides[name]))
        else:
            fields.append(pa.Schema.from_pandas(df[[name]], preserve_index=False).field(name))
    return pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)


def assert_same_table(got: pa.Table, want: pa.Table) -> None:
    """Same schema (names and types) and same values, independent of batch boundaries."""
    assert got.schema.names == want.schema.names
    assert got.schema.types == want.schema.types, (got.schema, want.schema)
    assert got.num_rows == want.num_rows
    got, want = got.combine_chunks(), want.combine_chunks()
    for name in want.column_names:
        a, b = got.column(name), want.column(name)
        if pa.types.is_dictionary(b.type):
            # A dictionary may come back with its values in another order: compare values.
            assert a.to_pylist() == b.to_pylist(), f"column {name} differs"
        else:
            assert a.equals(b), f"column {name} differs"


def test_pandas_dtypes_round_trip(node):
    n = node()
    c = n.client()
    df = many_dtypes_frame()
    table = table_from_frame(df)
    res = put_table(c, ("analytics", "dtypes"), table, max_chunksize=128)
    assert res["ticket"] == "ads1:analytics/dtypes@1"
    assert (res["namespace"], res["name"], res["version"], res["rows"]) == (
        "analytics", "dtypes", 1, len(df))
    assert res["bytes"] > 0
    assert "expiresAt" not in res

    got = get_table(c, res["ticket"])
    assert_same_table(got, table)
    back = got.to_pandas()
    pd.testing.assert_frame_equal(back, table.to_pandas())
    # The dtypes a pandas user relies on survive: tz, categorical, nullable ints.
    assert str(back["ts_paris"].dt.tz) == "Europe/Paris"
    assert isinstance(back["colour"].dtype, pd.CategoricalDtype)
    assert back["maybe"].dtype == pd.Int64Dtype()
    assert back["maybe"].isna().sum() == df["maybe"].isna().sum()
    assert back["f64_nan"].isna().sum() == df["f64_nan"].isna().sum()
    assert back["price"].iloc[1] == decimal.Decimal("1.01")



def test_pandas_dtypes_round_trip_after_reload_from_parquet(node):
    n = node()
    c = n.client()
    table = table_from_frame(many_dtypes_frame())
    assert table.schema.metadata and b"pandas" in table.schema.metadata
    res = put_table(c, ("analytics", "dtypes"), table, max_chunksize=128)
    evicted = json.loads(n.action(c, "evict", {"namespace": "analytics", "name": "dtypes"})[0])
    assert evicted["evicted"] >= 1
    reloaded = get_table(c, res["ticket"])
    assert_same_table(reloaded, table)
    pd.testing.assert_frame_equal(reloaded.to_pandas(), table.to_pandas())


def test_dtypes_without_schema_metadata_reload_from_parquet(node):
    """The same dtypes with the pandas metadata stripped do reload from Parquet."""
    n = node()
    c = n.client()
    table = table_from_frame(many_dtypes_frame()).replace_schema_metadata(None)
    res = put_table(c, ("analytics", "dtypes"), table, max_chunksize=128)
    n.action(c, "evict", {"namespace": "analytics", "name": "dtypes"})
    assert_same_table(get_table(c, res["ticket"]), table)


def test_schema_metadata_survives_reload(node):
    n = node()
    c = n.client()
    table = pa.table({"x": [1, 2]}).replace_schema_metadata({"origin": "test"})
    res = put_table(c, ("analytics", "meta"), table)
    got = get_table(c, res["ticket"])
    assert got.equals(table) and got.schema.metadata == {b"origin": b"test"}
    n.action(c, "evict", {"namespace": "analytics", "name": "meta"})
    got = get_table(c, res["ticket"])
    assert got.equals(table) and got.schema.metadata == {b"origin": b"test"}


def test_versions_increment_and_old_tickets_pin_their_version(node):
    n = node()
    c = n.client()
    tables = [pa.table({"v": pa.array([k] * (k + 1), pa.int64()), "s": [f"x{k}"] * (k + 1)})
              for k in range(3)]
    results = [put_table(c, ("analytics", "pinned"), t) for t in tables]
    assert [r["version"] for r in results] == [1, 2, 3]
    assert [r["ticket"] for r in results] == [f"ads1:analytics/pinned@{v}" for v in (1, 2, 3)]
    for r, t in zip(results, tables):
        assert get_table(c, r["ticket"]).equals(t)
    # Latest wins in GetFlightInfo; old tickets keep reading their own version.
    info = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "pinned"))
    assert info.total_records == 3
    assert get_table(c, info.endpoints[0].ticket).equals(tables[2])
    assert get_table(c, results[0]["ticket"]).equals(tables[0])
    # A one-element path is namespace `default`, a different dataset.
    r = put_table(c, "pinned", tables[0])
    assert r["ticket"] == "ads1:default/pinned@1"


def test_flight_info_schema_and_expiration(node):
    n = node()
    c = n.client()
    table = pa.table({"id": pa.array(range(1000), pa.int64()),
                      "name": [f"n{i}" for i in range(1000)]})
    before = dt.datetime.now(dt.timezone.utc)
    opts = flight.FlightCallOptions(headers=[(b"x-flight-ttl", b"6h")])
    res = put_table(c, ("analytics", "leased"), table, options=opts)
    expires = dt.datetime.fromisoformat(res["expiresAt"].replace("Z", "+00:00"))
    assert before + dt.timedelta(hours=6) - dt.timedelta(seconds=5) <= expires
    assert expires <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=6, seconds=5)

    desc = flight.FlightDescriptor.for_path("analytics", "leased")
    info = c.get_flight_info(desc)
    assert info.schema == table.schema
    assert info.total_records == 1000
    assert info.total_bytes > 0
    assert list(info.descriptor.path) == [b"analytics", b"leased"]
    assert len(info.endpoints) == 1
    ep = info.endpoints[0]
    assert ep.ticket.ticket == res["ticket"].encode()
    assert ep.expiration_time is not None
    assert abs(ep.expiration_time.value / 1e9 - expires.timestamp()) < 1.0
    assert any(loc.uri.startswith(b"arrow-flight-reuse-connection") for loc in ep.locations)

    assert c.get_schema(desc).schema == table.schema

    # No TTL: no expiration on the endpoint.
    put_table(c, ("analytics", "forever"), table)
    ep = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "forever")).endpoints[0]
    assert ep.expiration_time is None


def test_list_flights_and_list_actions(node):
    n = node()
    c = n.client()
    t = pa.table({"x": [1, 2]})
    put_table(c, ("analytics", "a1"), t)
    put_table(c, ("analytics", "a2"), t)
    put_table(c, ("analytics", "a2"), pa.table({"x": [1, 2, 3]}))
    put_table(c, ("ops", "o1"), t)

    def listed(criteria=None):
        infos = list(c.list_flights(criteria)) if criteria is not None else list(c.list_flights())
        return {tuple(p.decode() for p in i.descriptor.path): i for i in infos}

    everything = listed()
    assert set(everything) == {("analytics", "a1"), ("analytics", "a2"), ("ops", "o1")}
    assert everything[("analytics", "a2")].total_records == 3  # the latest version
    only = listed(b"analytics")
    assert set(only) == {("analytics", "a1"), ("analytics", "a2")}
    assert listed(b"nobody") == {}
    expect_flight_error(pa.ArrowInvalid, lambda: listed(b"../etc"), match="invalid namespace")

    actions = {a.type: a.description for a in c.list_actions()}
    assert set(actions) >= {"delete", "evict", "stats", "load", "renew", "RenewFlightEndpoint"}
    assert all(desc for desc in actions.values())


def test_delete_one_version_and_whole_dataset(node):
    n = node()
    c = n.client()
    r1 = put_table(c, ("analytics", "gone"), pa.table({"x": [1]}))
    r2 = put_table(c, ("analytics", "gone"), pa.table({"x": [1, 2]}))
    out = json.loads(n.action(c, "delete", {"namespace": "analytics", "name": "gone",
                                            "version": 2})[0])
    assert out == {"deleted": [2]}
    expect_flight_error(pa.ArrowKeyError, get_table, c, r2["ticket"], match="not found")
    assert get_table(c, r1["ticket"]).num_rows == 1
    info = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "gone"))
    assert info.total_records == 1

    r3 = put_table(c, ("analytics", "gone"), pa.table({"x": [7, 8, 9]}))
    assert r3["version"] == 3  # a deleted version's number is never reused
    out = json.loads(n.action(c, "delete", {"namespace": "analytics", "name": "gone"})[0])
    assert sorted(out["deleted"]) == [1, 3]
    for r in (r1, r3):
        expect_flight_error(pa.ArrowKeyError, get_table, c, r["ticket"])
    expect_flight_error(pa.ArrowKeyError, c.get_flight_info,
                        flight.FlightDescriptor.for_path("analytics", "gone"))
    assert ("analytics", "gone") not in {
        tuple(p.decode() for p in i.descriptor.path) for i in c.list_flights()}
    # Nothing left to delete is NOT_FOUND.
    expect_flight_error(pa.ArrowKeyError, n.action, c, "delete",
                        {"namespace": "analytics", "name": "gone"})
    # In storage only the tombstones are left (they keep the numbers), and no parts.
    records = sorted((n.storage_dir / "analytics" / "gone").glob("*.manifest.json"))
    assert [p.name for p in records] == ["v1.manifest.json", "v2.manifest.json", "v3.manifest.json"]
    assert all(json.loads(p.read_text())["format"] == "arrow.trinity.io/tombstone-v1"
               for p in records)
    assert not list((n.storage_dir / "analytics" / "gone").rglob("*.parquet"))
    # The next upload goes on from there.
    assert put_table(c, ("analytics", "gone"), pa.table({"x": [1]}))["version"] == 4


def test_evict_then_reload_counts_a_miss(node):
    n = node()
    c = n.client()
    table = pa.table({"k": pa.array(range(20_000), pa.int64()),
                      "v": pa.array(np.linspace(0, 1, 20_000))})
    res = put_table(c, ("analytics", "hot"), table)
    s0 = n.stats(c)
    assert get_table(c, res["ticket"]).equals(table)
    s1 = n.stats(c)
    assert s1["hits"] == s0["hits"] + 1, (s0, s1)
    assert s1["misses"] == s0["misses"]

    out = json.loads(n.action(c, "evict", {"namespace": "analytics", "name": "hot"})[0])
    assert out["evicted"] == 1
    s2 = n.stats(c)
    assert get_table(c, res["ticket"]).equals(table)
    s3 = n.stats(c)
    assert s3["misses"] == s2["misses"] + 1, (s2, s3)
    assert s3["hits"] == s2["hits"], (s2, s3)
    # Now cached again: the next read is a hit.
    assert get_table(c, res["ticket"]).equals(table)
    assert n.stats(c)["hits"] == s3["hits"] + 1


def test_stats_shape(node):
    n = node("--memory-limit", "64MiB")
    c = n.client()
    stats = n.stats(c)
    for key in ("hits", "misses", "evictions"):
        assert isinstance(stats[key], int)
    assert stats["storageUrl"] == n.storage_url
    # --memory-limit is split between the cache and request memory (a quarter by default).
    assert stats["memoryLimit"] + stats["requestMemoryLimit"] == 64 * 2**20, stats
    assert stats["requestMemoryLimit"] == 16 * 2**20, stats


def test_load_csv_and_parquet_from_storage(node):
    n = node()
    c = n.client()
    rows = [{"id": i, "city": f"c{i % 3}", "temp": i / 4} for i in range(50)]
    src = n.storage_dir / "analytics" / "incoming"  # the namespace's own prefix
    src.mkdir(parents=True)
    with open(src / "weather.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "city", "temp"])
        w.writeheader()
        w.writerows(rows)
    res = json.loads(n.action(c, "load", {"namespace": "analytics", "name": "weather",
                                          "source": "analytics/incoming/weather.csv"})[0])
    assert res["version"] == 1 and res["rows"] == 50
    got = get_table(c, res["ticket"])
    assert got.column("id").to_pylist() == list(range(50))
    assert got.column("city").to_pylist() == [r["city"] for r in rows]
    assert got.column("temp").to_pylist() == [r["temp"] for r in rows]

    table = table_from_frame(many_dtypes_frame(100)).replace_schema_metadata(None)
    pq.write_table(table, src / "dtypes.parquet")
    res = json.loads(n.action(c, "load", {"namespace": "analytics", "name": "fromparquet",
                                          "source": "analytics/incoming/dtypes.parquet", "ttl": "1h"})[0])
    assert res["rows"] == 100 and "expiresAt" in res
    assert_same_table(get_table(c, res["ticket"]), table)

    # A missing source is NOT_FOUND; one outside the storage is refused.
    expect_flight_error(pa.ArrowKeyError, n.action, c, "load",
                        {"namespace": "analytics", "name": "x", "source": "analytics/incoming/none.csv"})
    expect_flight_error(pa.ArrowInvalid, n.action, c, "load",
                        {"namespace": "analytics", "name": "x", "source": "file:///etc/passwd"},
                        match="outside")
    expect_flight_error(pa.ArrowInvalid, n.action, c, "load",
                        {"namespace": "analytics", "name": "x", "source": "../../etc/passwd.csv"})


def test_renew_extends_the_lease(node):
    n = node()
    c = n.client()
    opts = flight.FlightCallOptions(headers=[(b"x-flight-ttl", b"1h")])
    res = put_table(c, ("analytics", "lease"), pa.table({"x": [1, 2, 3]}), options=opts)
    first = dt.datetime.fromisoformat(res["expiresAt"].replace("Z", "+00:00"))
    renewed = json.loads(n.action(c, "renew", {"ticket": res["ticket"], "ttl": "48h"})[0])
    second = dt.datetime.fromisoformat(renewed["expiresAt"].replace("Z", "+00:00"))
    assert second - first > dt.timedelta(hours=46)
    assert renewed["ticket"] == res["ticket"]
    ep = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "lease")).endpoints[0]
    assert abs(ep.expiration_time.value / 1e9 - second.timestamp()) < 1.0

    # The renewed lease is durable: the manifest in storage carries it.
    manifest = json.loads((n.storage_dir / "analytics" / "lease" / "v1.manifest.json").read_text())
    assert dt.datetime.fromisoformat(manifest["expiresAt"].replace("Z", "+00:00")) == second

    # Standard RenewFlightEndpoint through pyarrow's API.
    want = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5)
    endpoint = flight.FlightEndpoint(res["ticket"].encode(), [],
                                     expiration_time=pa.scalar(want, pa.timestamp("ns", "UTC")))
    got = flight.FlightEndpoint.deserialize(
        n.action(c, "RenewFlightEndpoint", renew_request(endpoint))[0])
    assert abs(got.expiration_time.value / 1e9 - want.timestamp()) < 1.0

    # The endpoint exactly as GetFlightInfo returned it extends the lease by the version's
    # TTL (1h), here from a lease shortened to 30 minutes.
    n.action(c, "renew", {"ticket": res["ticket"], "ttl": "30m"})
    ep = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "lease")).endpoints[0]
    got = flight.FlightEndpoint.deserialize(
        n.action(c, "RenewFlightEndpoint", renew_request(ep))[0])
    expected = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    assert abs(got.expiration_time.value / 1e9 - expected.timestamp()) < 5.0

    expect_flight_error(pa.ArrowInvalid, n.action, c, "renew",
                        {"ticket": res["ticket"], "ttl": "soon"})
    expect_flight_error(pa.ArrowKeyError, n.action, c, "renew",
                        {"ticket": "ads1:analytics/lease@9", "ttl": "1h"})


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def renew_request(endpoint: flight.FlightEndpoint) -> bytes:
    """Protobuf RenewFlightEndpointRequest {endpoint = 1}; pyarrow has no Python class for it."""
    body = endpoint.serialize()
    length, varint = len(body), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            varint.append(byte | 0x80)
        else:
            varint.append(byte)
            break
    return b"\x0a" + bytes(varint) + body


def test_expired_version_is_not_served(node):
    n = node()
    c = n.client()
    opts = flight.FlightCallOptions(headers=[(b"x-flight-ttl", b"1s")])
    res = put_table(c, ("analytics", "brief"), pa.table({"x": [1]}), options=opts)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            get_table(c, res["ticket"])
        except pa.ArrowKeyError as e:
            assert "expired" in str(e)
            break
        time.sleep(0.2)
    else:
        pytest.fail("a version with a 1s TTL was still served after 5s")
    expect_flight_error(pa.ArrowKeyError, c.get_flight_info,
                        flight.FlightDescriptor.for_path("analytics", "brief"))


def test_http_csv_upload_and_export(node):
    n = node()
    c = n.client()
    body = "id,name,score\n" + "".join(f"{i},n{i},{i * 1.5}\n" for i in range(200))
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/scores?ttl=2h",
                                  method="POST", data=body.encode(),
                                  headers={"Content-Type": "text/csv"})
    assert status == 201, raw
    res = json.loads(raw)
    assert res["ticket"] == "ads1:analytics/scores@1" and res["rows"] == 200
    assert "expiresAt" in res
    # The same data through Flight.
    got = get_table(c, res["ticket"])
    assert got.column("id").to_pylist() == list(range(200))
    assert got.column("score").to_pylist() == [i * 1.5 for i in range(200)]

    status, raw, headers = http_request(f"{n.http}/v1/datasets/analytics/scores?format=csv")
    assert status == 200 and headers["content-type"].startswith("text/csv")
    exported = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(exported) == 200
    assert exported[3] == {"id": "3", "name": "n3", "score": "4.5"}

    status, raw, headers = http_request(f"{n.http}/v1/datasets/analytics/scores?format=json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    records = json.loads(raw)
    assert len(records) == 200 and records[10] == {"id": 10, "name": "n10", "score": 15.0}

    # Export of a Flight upload, and a version pinned by query.
    put_table(c, ("analytics", "scores"), pa.table({"id": [1], "name": ["z"], "score": [0.5]}))
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/scores?format=json")
    assert json.loads(raw) == [{"id": 1, "name": "z", "score": 0.5}]
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/scores?format=json&version=1")
    assert len(json.loads(raw)) == 200

    # Errors map to HTTP statuses with a JSON body.
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/nothing?format=csv")
    assert status == 404 and json.loads(raw)["code"] == "NotFound"
    status, raw, _ = http_request(f"{n.http}/v1/datasets/Analytics/x", method="POST", data=b"a\n1\n")
    assert status == 400
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/scores?format=xml")
    assert status == 400

    status, raw, _ = http_request(f"{n.http}/healthz")
    assert status == 200
    status, raw, _ = http_request(f"{n.http}/metrics")
    assert status == 200 and b"# TYPE" in raw


def test_multi_part_parallel_download(node):
    n = node("--part-size", "1MiB")
    c = n.client()
    rows = 400_000  # ~ 6.4 MB of Arrow data: several 1 MiB parts
    table = pa.table({"id": pa.array(np.arange(rows, dtype=np.int64)),
                      "val": pa.array(np.arange(rows, dtype=np.float64) / 3)})
    res = put_table(c, ("analytics", "big"), table, max_chunksize=50_000)
    info = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "big"))
    assert info.total_records == rows
    assert len(info.endpoints) >= 3, len(info.endpoints)
    tickets = [ep.ticket.ticket for ep in info.endpoints]
    assert tickets == [f"{res['ticket']}#{k}".encode() for k in range(len(tickets))]

    def fetch(ticket):
        client = flight.FlightClient(n.location)
        try:
            return client.do_get(flight.Ticket(ticket)).read_all()
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(fetch, tickets))
    assert all(p.num_rows > 0 for p in parts)
    assert pa.concat_tables(parts).combine_chunks().equals(table.combine_chunks())
    # The whole-version ticket still reads everything, in order.
    assert get_table(c, res["ticket"]).combine_chunks().equals(table.combine_chunks())
    # A part that does not exist is NOT_FOUND.
    expect_flight_error(pa.ArrowKeyError, get_table, c,
                        f"{res['ticket']}#{len(tickets)}", match="part")

    # Parts survive eviction: reload from Parquet, again in parallel.
    n.action(c, "evict", {"namespace": "analytics", "name": "big"})
    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(fetch, tickets))
    assert pa.concat_tables(parts).combine_chunks().equals(table.combine_chunks())


def test_unused_methods_answer_as_the_spec_says_for_complete_datasets(node):
    n = node()
    c = n.client()
    put_table(c, ("analytics", "done"), pa.table({"x": [1]}))
    info = c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "done"))
    # CancelFlightInfoRequest{info = 1} -> CancelFlightInfoResult{status = NOT_CANCELLABLE (3)}.
    body = info.serialize()
    request = bytes([0x0A]) + varint(len(body)) + body
    assert n.action(c, "CancelFlightInfo", request) == [bytes([0x08, 3])]
    expect_flight_error(pa.ArrowInvalid, n.action, c, "CancelFlightInfo", b"",
                        match="no FlightInfo")
    writer, reader = c.do_exchange(flight.FlightDescriptor.for_path("x"))
    with pytest.raises(pa.ArrowNotImplementedError, match="DoExchange"):
        writer.begin(pa.schema([("a", pa.int64())]))
        writer.done_writing()
        reader.read_all()
    with pytest.raises(pa.ArrowNotImplementedError):
        writer.close()
    expect_flight_error(pa.ArrowInvalid, n.action, c, "frobnicate", b"", match="ListActions")
    # And the node still serves.
    assert put_table(c, "after", pa.table({"x": [1]}))["version"] == 1


def test_one_cold_read_counts_one_miss(node):
    n = node()
    c = n.client()
    res = put_table(c, ("analytics", "cold"), pa.table({"x": list(range(100))}))
    n.action(c, "evict", {"namespace": "analytics", "name": "cold"})
    before = n.stats(c)
    get_table(c, res["ticket"])
    after = n.stats(c)
    assert after["misses"] - before["misses"] == 1, (before, after)


def test_load_parquet_written_by_pandas(node):
    """`df.to_parquet()` is how most users make a Parquet file; it stores pandas metadata."""
    n = node()
    c = n.client()
    df = pd.DataFrame({"id": [1, 2, 3], "name": ["a", "b", "c"]})
    (n.storage_dir / "analytics" / "incoming").mkdir(parents=True)
    df.to_parquet(n.storage_dir / "analytics" / "incoming" / "frame.parquet")
    res = json.loads(n.action(c, "load", {"namespace": "analytics", "name": "frame",
                                          "source": "analytics/incoming/frame.parquet"})[0])
    assert res["rows"] == 3
    pd.testing.assert_frame_equal(get_table(c, res["ticket"]).to_pandas(), df)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_http_export_of_utc_timestamps(node, fmt):
    n = node()
    c = n.client()
    table = pa.table({"t": pa.array([1_700_000_000_000], pa.timestamp("ms", "UTC"))})
    put_table(c, ("analytics", "times"), table)
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/times?format={fmt}")
    assert status == 200
    assert b"2023-11-14T22:13:20" in raw


def test_http_export_of_offset_and_naive_timestamps(node):
    n = node()
    c = n.client()
    table = pa.table({"a": pa.array([1_700_000_000_000], pa.timestamp("ms", "+01:00")),
                      "b": pa.array([1_700_000_000_000], pa.timestamp("ms"))})
    put_table(c, ("analytics", "times"), table)
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/times?format=json")
    assert status == 200
    assert json.loads(raw) == [{"a": "2023-11-14T23:13:20+01:00", "b": "2023-11-14T22:13:20"}]
