"""The `trinity-flight` command, installed as a console script, against a real node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest


def cli() -> list:
    exe = shutil.which("trinity-flight", path=str(Path(sys.executable).parent))
    assert exe, "the trinity-flight console script is not installed next to this Python"
    return [exe]


def run(node, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
    env.update(FLIGHT_URI=node.uri, FLIGHT_NAMESPACE="cli")
    out = subprocess.run([*cli(), *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


@pytest.fixture
def files(tmp_path: Path) -> dict:
    table = pa.table({"id": list(range(1000)), "city": [f"c{i % 5}" for i in range(1000)],
                      "amount": [i / 4 for i in range(1000)]})
    paths = {"parquet": tmp_path / "t.parquet", "csv": tmp_path / "t.csv",
             "arrow": tmp_path / "t.arrow"}
    pq.write_table(table, paths["parquet"])
    pacsv.write_csv(table, paths["csv"])
    feather.write_feather(table, paths["arrow"])
    return {"table": table, **paths}


def test_put_get_head_ls_in_every_format(node, files, tmp_path: Path) -> None:
    table = files["table"]
    tickets = {}
    for fmt in ("parquet", "csv", "arrow"):
        out = run(node, "put", str(files[fmt]), f"from-{fmt}", "--ttl", "1h")
        tickets[fmt] = out.stdout.strip()
        assert tickets[fmt].startswith(f"ads1:cli/from-{fmt}@"), out.stdout
    # Get to every format; what comes back equals what went in.
    for fmt, ticket in tickets.items():
        for ext in ("parquet", "csv", "arrow"):
            target = tmp_path / f"back-{fmt}.{ext}"
            run(node, "get", ticket, str(target))
            back = {"parquet": pq.read_table, "csv": pacsv.read_csv,
                    "arrow": feather.read_table}[ext](target)
            assert back.num_rows == 1000
            assert back.column("id").to_pylist() == table.column("id").to_pylist()
    head = run(node, "head", tickets["parquet"], "--rows", "3").stdout.splitlines()
    assert head[0].split() == ["ID", "CITY", "AMOUNT"]
    assert len(head) == 4 and head[1].split() == ["0", "c0", "0.0"]
    head = run(node, "head", tickets["parquet"], "--rows", "2", "--columns", "amount,id")
    assert [line.split() for line in head.stdout.splitlines()] == [
        ["AMOUNT", "ID"], ["0.0", "0"], ["0.25", "1"]]
    run(node, "get", tickets["csv"], str(tmp_path / "two.parquet"), "--columns", "city")
    assert pq.read_table(tmp_path / "two.parquet").column_names == ["city"]
    listed = json.loads(run(node, "-o", "json", "ls").stdout)
    assert sorted(d["name"] for d in listed) == ["from-arrow", "from-csv", "from-parquet"]
    assert all(d["rows"] == 1000 and d["expiresAt"] for d in listed)
    text = run(node, "ls").stdout
    assert "from-parquet" in text and "NAME" in text


def test_consumers_renew_delete_stats_and_exit_codes(node, files) -> None:
    put = json.loads(run(node, "-o", "json", "put", str(files["parquet"]), "shared",
                         "--consumers", "scorer,reporter").stdout)
    assert put["consumers"]["pending"] == ["scorer", "reporter"]
    out = run(node, "release", put["ticket"], "--as", "scorer").stdout
    assert "pending: reporter" in out
    renewed = json.loads(run(node, "-o", "json", "renew", put["ticket"], "--ttl", "2h").stdout)
    assert renewed["expiresAt"]
    stats = json.loads(run(node, "-o", "json", "stats").stdout)
    assert "memoryLimit" in stats and isinstance(stats["tables"], list)
    deleted = json.loads(run(node, "-o", "json", "delete", "shared").stdout)
    assert deleted["deleted"] == [1]

    # Exit codes a script can act on, and a sentence on stderr.
    missing = run(node, "get", "ads1:cli/shared@1", "/dev/null", check=False)
    assert missing.returncode == 3, missing.stderr
    assert "trinity-flight:" in missing.stderr
    bad = run(node, "put", str(files["parquet"]), "Not_A_Label", check=False)
    assert bad.returncode == 4, bad.stderr
    usage = run(node, "frobnicate", check=False)
    assert usage.returncode == 2
    unknown_format = run(node, "put", "/etc/hostname", "x", check=False)
    assert unknown_format.returncode == 4 and "--format" in unknown_format.stderr
    down = subprocess.run([*cli(), "--uri", "grpc://127.0.0.1:1", "ls"], capture_output=True,
                          text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")})
    assert down.returncode == 6, down.stderr
