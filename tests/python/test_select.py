"""Reading some columns and the first rows of a version, with pyarrow's own Flight client
and over HTTP: the ticket's `?columns=...&limit=...` selection, `GetFlightInfo` with a
command descriptor holding a ticket (and a selection to add), signing, and bad input."""

from __future__ import annotations

import csv
import io
import json
import urllib.parse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import expect_flight_error, get_table, http_request, put_table

ROWS = 300_000


def wide_table(rows: int = ROWS) -> pa.Table:
    rng = np.random.default_rng(3)
    cols = {
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "price": pa.array(rng.normal(100, 5, rows)),
        "name, odd~#?&=%/é": pa.array([f"n{i % 1000}" for i in range(rows)]),
        "cat": pa.array([["a", "b", "c"][i % 3] for i in range(rows)]).dictionary_encode(),
    }
    for k in range(8):
        cols[f"f{k}"] = pa.array(rng.normal(size=rows))
    return pa.table(cols)


def command(ticket: str, **selection) -> flight.FlightDescriptor:
    if not selection:
        return flight.FlightDescriptor.for_command(ticket.encode())
    return flight.FlightDescriptor.for_command(json.dumps({"ticket": ticket, **selection}).encode())


def read_info(c: flight.FlightClient, info: flight.FlightInfo) -> pa.Table:
    parts = [get_table(c, ep.ticket) for ep in info.endpoints]
    return pa.concat_tables(parts) if parts else info.schema.empty_table()


@pytest.fixture
def wide(node):
    n = node("--part-size", "2MiB")
    c = n.client()
    table = wide_table()
    ticket = put_table(c, ("analytics", "wide"), table, max_chunksize=40_000)["ticket"]
    return n, c, table, ticket


def test_ticket_selection_reads_only_the_chosen_columns_and_rows(wide):
    n, c, table, ticket = wide
    odd = "name, odd~#?&=%/é"
    quoted = urllib.parse.quote(odd, safe="").replace("~", "%7E")
    got = get_table(c, f"{ticket}?columns=price,{quoted}")
    assert got.column_names == ["price", odd]
    assert got.equals(table.select(["price", odd]))
    got = get_table(c, f"{ticket}?limit=1000")
    assert got.equals(table.slice(0, 1000))
    got = get_table(c, f"{ticket}?columns=cat,id&limit=70000")
    assert got.schema.field("cat").type == table.schema.field("cat").type
    assert got.equals(table.select(["cat", "id"]).slice(0, 70_000))
    # Pandas metadata travels with the chosen columns; to_pandas still works.
    df = get_table(c, f"{ticket}?columns=id&limit=5").to_pandas()
    assert df["id"].tolist() == [0, 1, 2, 3, 4]


def test_get_flight_info_with_a_ticket_plans_the_selection(wide):
    n, c, table, ticket = wide
    whole = c.get_flight_info(command(ticket))
    assert whole.total_records == ROWS and len(whole.endpoints) > 3
    assert read_info(c, whole).equals(table)

    info = c.get_flight_info(command(ticket, columns=["f3", "id"]))
    assert info.schema.names == ["f3", "id"]
    assert info.total_records == ROWS
    assert 0 < info.total_bytes < whole.total_bytes / 4
    assert all(b"?columns=f3,id" in ep.ticket.ticket for ep in info.endpoints)
    assert read_info(c, info).equals(table.select(["f3", "id"]))

    # A limit leaves out the parts past it: a preview is one endpoint.
    info = c.get_flight_info(command(ticket, limit=1000))
    assert info.total_records == 1000 and len(info.endpoints) == 1
    assert read_info(c, info).equals(table.slice(0, 1000))
    info = c.get_flight_info(command(ticket, limit=ROWS - 1))
    assert len(info.endpoints) == len(whole.endpoints)
    assert read_info(c, info).equals(table.slice(0, ROWS - 1))


def test_a_selection_is_narrowed_never_widened(wide):
    n, c, table, ticket = wide
    narrowed = f"{ticket}?columns=id,price&limit=10"
    info = c.get_flight_info(command(narrowed, columns=["price"], limit=50))
    assert info.schema.names == ["price"] and info.total_records == 10
    expect_flight_error(pa.ArrowInvalid, c.get_flight_info,
                        command(narrowed, columns=["f1"]), match="not among the ticket's columns")


@pytest.mark.parametrize("bad, match", [
    ("?columns=nope", "no column \"nope\""),
    ("?columns=id,id", "selected twice"),
    ("?limit=-1", "not a row count"),
    ("?rows=3", "unknown ticket selection"),
    ("?columns=", "empty column name"),
])
def test_bad_selections_are_invalid_argument(wide, bad, match):
    n, c, table, ticket = wide
    expect_flight_error(pa.ArrowInvalid, get_table, c, ticket + bad, match=match)
    expect_flight_error(pa.ArrowInvalid, c.get_flight_info, command(ticket + bad),
                        match=match)
    assert n.alive()


def test_bad_commands_are_invalid_argument(wide):
    n, c, table, ticket = wide
    for cmd, match in [(b"{\"ticket\": 3}", "neither a ticket nor JSON"),
                       (json.dumps({"ticket": ticket, "rows": 3}).encode(), "unknown field"),
                       (b"not a ticket", "malformed ticket"),
                       (b"{" * 70_000, "commands are at most")]:
        expect_flight_error(pa.ArrowInvalid, c.get_flight_info,
                            flight.FlightDescriptor.for_command(cmd), match=match)
    assert n.alive()


def test_signed_nodes_issue_signed_selections(node, tmp_path):
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    n = node("--ticket-key-file", str(key), "--part-size", "2MiB")
    c = n.client()
    table = wide_table(50_000)
    ticket = put_table(c, ("analytics", "wide"), table)["ticket"]
    body, sig = ticket.split("~")
    # A selection added to a signed ticket by hand does not verify ...
    expect_flight_error(pa.ArrowInvalid, get_table, c, f"{body}?limit=5~{sig}",
                        match="signature does not verify")
    # ... the node issues it, signed.
    info = c.get_flight_info(command(ticket, columns=["id"], limit=5))
    [ep] = info.endpoints
    assert b"?columns=id&limit=5~" in ep.ticket.ticket
    assert get_table(c, ep.ticket).equals(table.select(["id"]).slice(0, 5))


def test_http_export_selects_columns_and_rows(wide):
    n, c, table, ticket = wide
    status, raw, _ = http_request(
        f"{n.http}/v1/datasets/analytics/wide?format=csv&columns=f1,id&limit=3")
    assert status == 200, raw
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert rows[0] == ["f1", "id"]
    assert [int(r[1]) for r in rows[1:]] == [0, 1, 2]
    assert float(rows[1][0]) == pytest.approx(table.column("f1")[0].as_py())
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/wide?format=json&limit=2")
    assert status == 200 and [r["id"] for r in json.loads(raw)] == [0, 1]
    status, raw, _ = http_request(f"{n.http}/v1/datasets/analytics/wide?columns=nope")
    assert status == 400 and b"no column" in raw


def test_chosen_columns_of_a_version_larger_than_memory(node):
    """A version the cache cannot hold is read from storage for each request; a selected
    read decodes only the chosen columns of its Parquet parts."""
    n = node("--part-size", "2MiB", "--memory-limit", "16MiB")
    c = n.client()
    table = wide_table()
    ticket = put_table(c, ("analytics", "wide"), table, max_chunksize=40_000)["ticket"]
    assert table.nbytes > 16 << 20
    got = get_table(c, f"{ticket}?columns=cat,f7,id&limit=250000")
    assert got.equals(table.select(["cat", "f7", "id"]).slice(0, 250_000))
    info = c.get_flight_info(command(ticket, columns=["price"]))
    assert read_info(c, info).equals(table.select(["price"]))
    # Again after evicting it: every part from storage.
    n.action(c, "evict", json.dumps({"namespace": "analytics", "name": "wide"}).encode())
    odd = "name, odd~#?&=%/é"
    quoted = urllib.parse.quote(odd, safe="").replace("~", "%7E")
    got = get_table(c, f"{ticket}?columns={quoted},f0&limit=123456")
    assert got.equals(table.select([odd, "f0"]).slice(0, 123_456))
