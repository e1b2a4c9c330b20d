"""flight-node benchmark harness: each scenario runs our node and its peer side by side in one
run on the same machine, interleaving repetitions, and reports medians with min–max and the
speed ratio (ours ÷ peer, > 1 means we are faster).

Run through `bench/run` (which prepares the venv and builds the binary); see bench/README.md.
These are measurements, not tests: nothing here asserts a timing. The harness does check that
every contender returned the expected data, and fails loudly when it did not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import io
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as flight
import pyarrow.fs as pafs
import pyarrow.parquet as pq

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PEERS = BENCH_DIR / "peers"
CLIENT_SRC = REPO / "clients" / "python" / "src"
# The Python client as checked out (the pool scenario imports it), not an installed copy.
sys.path.insert(0, str(CLIENT_SRC))
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0
MB = 1e6
MIB = 1 << 20

# Rows per record batch of every uploaded table (both servers receive the same batches;
# pyarrow's server sends them back as received). ~6 MB per batch for the mixed table.
BATCH_ROWS = 131_072

NODE_FLAGS = ["--memory-limit", "4GiB"]
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}

SCENARIOS = ["doget", "atom", "json", "doput", "csv", "cold", "latency", "memory", "pool"]

PROFILES = {
    # Seconds: tiny tables, one repetition, no warm-up. Checks the harness end to end.
    "smoke": dict(big_mb=4, csv_mb=2, cold_mb=4, json_rows=5_000, small_rows=1_000,
                  reps=1, warmup=0, latency_calls=20, latency_warmup=5, mem_gets=1),
    # Under 3 minutes.
    "quick": dict(big_mb=100, csv_mb=60, cold_mb=100, json_rows=100_000, small_rows=1_000,
                  reps=7, warmup=1, latency_calls=300, latency_warmup=30, mem_gets=3),
    # Under 15 minutes.
    "full": dict(big_mb=300, csv_mb=200, cold_mb=300, json_rows=200_000, small_rows=1_000,
                 reps=15, warmup=1, latency_calls=1_000, latency_warmup=50, mem_gets=5),
}

# Targets (DESIGN.md "Performance targets", as restated in bench/README.md): (op, value).
# ">=" for speed ratios, "<=" for memory and milliseconds. None: measured, no target.
TARGETS = {
    # The default client's ratio swings with its allocator's state: reported, no floor.
    "doget_vs_pyarrow": None,
    "doget_vs_pyarrow_client_keeps_memory": (">=", 1.0),
    "doget_vs_loopback": (">=", 0.6),
    "flight_vs_json": (">=", 15.0),
    "flight_download_only_vs_json": (">=", 80.0),
    "doput_vs_pyarrow": None,
    "csv_vs_pyarrow": None,
    "csv_vs_pyarrow_to_parquet": (">=", 1.0),
    "cold_vs_pyarrow_parquet": (">=", 1.2),
    "atom_read_vs_pyarrow": (">=", 1.5),
    "projection_2_of_12_vs_full": (">=", 4.0),
    "preview_p50_ms": ("<=", 20.0),
    "rss_ratio": ("<=", 1.15),
    "doget_extra_rss_mib": ("<=", 64.0),
    # Reported, no target: on one 2-core machine three nodes and the client share the
    # cores and the loopback, so this measures overhead, not scaling (see bench/README.md).
    "pool_vs_one_node": None,
}
REQUIRED_KEYS = ["doget_vs_pyarrow", "doget_vs_loopback", "flight_vs_json", "doput_vs_pyarrow",
                 "csv_vs_pyarrow", "cold_vs_pyarrow_parquet", "latency_p50_ms_ours",
                 "latency_p50_ms_pyarrow", "rss_ratio", "atom_read_vs_pyarrow",
                 "projection_2_of_12_vs_full", "preview_p50_ms"]
# The summary table and the plot: speed ratios (ours ÷ peer) ...
SUMMARY_RATIOS = ["atom_read_vs_pyarrow", "projection_2_of_12_vs_full", "cold_vs_pyarrow_parquet",
                  "doget_vs_pyarrow_client_keeps_memory", "doget_vs_pyarrow", "doget_vs_loopback",
                  "flight_vs_json", "flight_download_only_vs_json", "csv_vs_pyarrow_to_parquet",
                  "doput_vs_pyarrow"]
# ... and milliseconds.
SUMMARY_MS = ["preview_p50_ms", "latency_p50_ms_ours", "latency_p50_ms_pyarrow"]


class HarnessError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----- processes -----------------------------------------------------------------------------

_PROCS: list[subprocess.Popen] = []


def _kill_all() -> None:
    for p in _PROCS:
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(url: str, method: str = "GET", data=None, headers=None, timeout=30.0):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM etc. of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Vm"):
                k, v = line.split(":", 1)
                parts = v.split()
                if len(parts) == 2 and parts[1] == "kB":
                    out[k] = int(parts[0]) * 1024
    return out


class Server:
    """A subprocess; stderr (and stdout for the node) goes to a log file."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def spawn_peer(self, cmd: list[str], env=None) -> int:
        """Starts a peer that prints its port on its first stdout line; returns the port."""
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, env=env)
        _PROCS.append(self.proc)
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline().strip() if ready else b""
        if not line.isdigit():
            self.stop()
            raise HarnessError(f"{self.name} did not start:\n{self.log_tail()}")
        return int(line)

    def rss(self) -> int:
        return proc_status(self.pid)["VmRSS"]

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.stdin:
            try:
                p.stdin.close()
            except OSError:
                pass
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p.stdout:
            p.stdout.close()


class FlightNode(Server):
    def __init__(self, binary: Path, workdir: Path, storage_url: str | None = None,
                 args: list[str] | None = None, env: dict | None = None, name="flight-node"):
        super().__init__(name, workdir)
        self.binary = binary
        if storage_url is None:
            d = workdir / f"{name}-data"
            d.mkdir(parents=True, exist_ok=True)
            storage_url = f"file://{d}"
        self.storage_url = storage_url
        # A scenario's own --memory-limit replaces the default one.
        base = [] if "--memory-limit" in (args or []) else NODE_FLAGS
        self.args = base + list(args or [])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
        self.env.update(env or {})
        self.grpc_port = self.http_port = 0
        self.client: flight.FlightClient | None = None

    @property
    def cmdline(self) -> list[str]:
        return [str(self.binary), "--listen", f"127.0.0.1:{self.grpc_port}",
                "--http-listen", f"127.0.0.1:{self.http_port}",
                "--storage-url", self.storage_url, *self.args]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def start(self, grpc_port: int = 0) -> "FlightNode":
        """Starts on `grpc_port` (a pool's peers file names it first) or a free port."""
        self.grpc_port, self.http_port = grpc_port or free_port(), free_port()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.cmdline, stdout=logf, stderr=subprocess.STDOUT,
                                         env=self.env)
        _PROCS.append(self.proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"flight-node exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                if http_request(f"{self.http}/readyz", timeout=1.0)[0] == 200:
                    self.client = flight.FlightClient(f"grpc://127.0.0.1:{self.grpc_port}")
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise HarnessError(f"flight-node not ready within {START_TIMEOUT}s:\n{self.log_tail()}")

    def action(self, kind: str, body=b"") -> list[bytes]:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        return [r.body.to_pybytes() for r in self.client.do_action(flight.Action(kind, body))]

    def stats(self) -> dict:
        return json.loads(self.action("stats")[0])

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        super().stop()


class PyarrowPeer(Server):
    def __init__(self, workdir: Path):
        super().__init__("pyarrow-flight-server", workdir)
        self.client: flight.FlightClient | None = None

    def start(self) -> "PyarrowPeer":
        port = self.spawn_peer([sys.executable, str(PEERS / "pyarrow_server.py")])
        self.uri = f"grpc://127.0.0.1:{port}"
        self.client = flight.FlightClient(self.uri)
        self.client.wait_for_available(timeout=START_TIMEOUT)
        return self

    def action(self, kind: str, body: dict | None = None) -> list[bytes]:
        raw = json.dumps(body).encode() if body is not None else b""
        return [r.body.to_pybytes() for r in self.client.do_action(flight.Action(kind, raw))]

    def stop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None
        super().stop()


# ----- data ----------------------------------------------------------------------------------

MIXED_ROW_BYTES = 8 + 8 + 8 + 8 + 0.125 + 4 + 12.5  # id, qty, price, ts, flag, offsets, chars


def mixed_table(rows: int, seed: int = 7) -> pa.Table:
    """int64, float64, strings (10k distinct, 4–21 chars), timestamps, bool; deterministic."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    vocab = pa.array(["".join(rng.choice(letters, int(n))) for n in rng.integers(4, 22, 10_000)])
    base = np.datetime64("2024-01-01T00:00:00", "us")
    ts = base + rng.integers(0, 365 * 86_400 * 1_000_000, rows).astype("timedelta64[us]")
    return pa.table({
        "id": pa.array(np.arange(rows, dtype=np.int64)),
        "qty": pa.array(rng.integers(-1_000_000, 1_000_000, rows, dtype=np.int64)),
        "price": pa.array(rng.normal(100.0, 25.0, rows)),
        "name": vocab.take(pa.array(rng.integers(0, len(vocab), rows))),
        "created_at": pa.array(ts, type=pa.timestamp("us")),
        "flag": pa.array(rng.random(rows) < 0.5),
    })


def table_of_mb(mb: float, seed: int = 7) -> pa.Table:
    return mixed_table(max(1_000, int(mb * MB / MIXED_ROW_BYTES)), seed)


def put_table(client: flight.FlightClient, ns: str, name: str, table: pa.Table) -> dict:
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(ns, name), table.schema)
    writer.write_table(table, max_chunksize=BATCH_ROWS)
    writer.done_writing()
    buf = reader.read()
    writer.close()
    if buf is None:
        raise HarnessError("DoPut answered no PutResult")
    return json.loads(buf.to_pybytes())


def get_table(client: flight.FlightClient, ticket: str | bytes) -> pa.Table:
    if isinstance(ticket, str):
        ticket = ticket.encode()
    return client.do_get(flight.Ticket(ticket)).read_all()


def expect_rows(what: str, got: int, want: int) -> None:
    if got != want:
        raise HarnessError(f"{what}: got {got} rows, expected {want}")


# ----- measurement ---------------------------------------------------------------------------


def summarize(times: list[float], nbytes: float | None = None) -> dict:
    med = statistics.median(times)
    out = {"times_s": [round(t, 6) for t in times], "median_s": med, "min_s": min(times),
           "max_s": max(times)}
    if nbytes:
        out.update(mbps_median=nbytes / med / MB, mbps_min=nbytes / max(times) / MB,
                   mbps_max=nbytes / min(times) / MB)
    return out


def interleave(contenders: list[tuple[str, Callable[[], float]]], reps: int,
               warmup: int) -> dict[str, list[float]]:
    """Runs ours, peer, ours, peer, … for warmup + reps rounds; each callable returns the
    seconds it measured (so untimed setup, such as an evict, stays out). Warm-up rounds are
    discarded."""
    times: dict[str, list[float]] = {name: [] for name, _ in contenders}
    for r in range(warmup + reps):
        for name, fn in contenders:
            t = fn()
            if r >= warmup:
                times[name].append(t)
    return times


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@dataclass
class Ctx:
    profile: str
    p: dict
    binary: Path
    work: Path
    results: dict = field(default_factory=dict)   # flat keys for latest.json
    sections: dict = field(default_factory=dict)  # scenario -> detail for the report
    _tables: dict = field(default_factory=dict)

    def big_table(self) -> pa.Table:
        if "big" not in self._tables:
            self._tables["big"] = table_of_mb(self.p["big_mb"])
        return self._tables["big"]

    def workdir(self, name: str) -> Path:
        d = self.work / name
        d.mkdir(parents=True, exist_ok=True)
        return d


def section(ctx: Ctx, key: str, title: str, what: str, contenders: dict, ratios: dict,
            extra: dict | None = None) -> None:
    ctx.sections[key] = {"title": title, "what": what, "contenders": contenders,
                         "ratios": ratios, "extra": extra or {}}
    ctx.results.update(ratios)


# ----- scenarios -----------------------------------------------------------------------------


class Loopback:
    """Client side of the raw TCP ceiling: asks the sender for N bytes and `recv_into`s them
    into one preallocated buffer."""

    def __init__(self, port: int, nbytes: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.n = nbytes
        self.mv = memoryview(bytearray(nbytes))

    def fetch(self) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(struct.pack(">Q", self.n))
        off = 0
        while off < self.n:
            got = self.sock.recv_into(self.mv[off:], min(self.n - off, 16 * MIB))
            if not got:
                raise HarnessError("loopback sender closed the connection")
            off += got
        return time.perf_counter() - t0

    def close(self) -> None:
        self.sock.close()


# glibc settings under which a pyarrow client keeps the memory it frees between messages.
CLIENT_KEEPS_MEMORY = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                       "MALLOC_MMAP_THRESHOLD_": str(64 << 20)}


class Fetcher(Server):
    """A warm pyarrow client in its own process (`peers/flight_fetcher.py`), one per server:
    `fetch()` asks it for one `do_get(...).read_all()` and returns the seconds it measured."""

    def __init__(self, name: str, workdir: Path, uri: str, ticket: str, rows: int,
                 env: dict | None = None):
        super().__init__(name, workdir)
        self.ticket, self.rows = ticket, rows
        self.cpu: list[tuple[float, float, int]] = []
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, str(PEERS / "flight_fetcher.py"), uri],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, text=True, bufsize=1,
                                         env={**os.environ, **(env or {})})
        _PROCS.append(self.proc)
        if self._line() != "ready":
            raise HarnessError(f"{name} did not start:\n{self.log_tail()}")

    def _line(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT * 4)
        return self.proc.stdout.readline().strip() if ready else ""

    def fetch(self) -> float:
        self.proc.stdin.write(self.ticket + "\n")
        self.proc.stdin.flush()
        answer = self._line().split(" ", 1)
        if answer[0] != "ok":
            raise HarnessError(f"{self.name}: {' '.join(answer) or 'no answer'}\n{self.log_tail()}")
        secs, rows, user, sys_s, faults = answer[1].split()
        expect_rows(self.name, int(rows), self.rows)
        self.cpu.append((float(user), float(sys_s), int(faults)))
        return float(secs)

    def cpu_summary(self, skip: int) -> dict:
        kept = self.cpu[skip:] or self.cpu
        return {"client_user_ms": statistics.median(c[0] for c in kept) * 1000,
                "client_sys_ms": statistics.median(c[1] for c in kept) * 1000,
                "client_minor_faults": statistics.median(c[2] for c in kept)}


def sc_doget(ctx: Ctx) -> None:
    table = ctx.big_table()
    nbytes = table.nbytes
    w = ctx.workdir("doget")
    node, peer, sender = FlightNode(ctx.binary, w), PyarrowPeer(w), Server("tcp-sender", w)
    loop = None
    fetchers: list[Fetcher] = []
    try:
        node.start()
        peer.start()
        port = sender.spawn_peer([sys.executable, str(PEERS / "tcp_sender.py")])
        loop = Loopback(port, nbytes)
        ours_ticket = put_table(node.client, "bench", "doget", table)["ticket"]
        peer_ticket = put_table(peer.client, "bench", "doget", table)["ticket"]
        ours_fetch = Fetcher("client-of-flight-node", w, node.uri, ours_ticket, table.num_rows)
        fetchers.append(ours_fetch)
        peer_fetch = Fetcher("client-of-pyarrow", w, peer.uri, peer_ticket, table.num_rows)
        fetchers.append(peer_fetch)
        # The same clients with glibc told to keep freed memory: without the client's page
        # faults, which depend on its allocator's history, the servers' own speed shows.
        ours_kept = Fetcher("kept-client-of-flight-node", w, node.uri, ours_ticket,
                            table.num_rows, env=CLIENT_KEEPS_MEMORY)
        fetchers.append(ours_kept)
        peer_kept = Fetcher("kept-client-of-pyarrow", w, peer.uri, peer_ticket,
                            table.num_rows, env=CLIENT_KEEPS_MEMORY)
        fetchers.append(peer_kept)

        def shared(client, ticket, who):
            def run():
                t, got = timed(lambda: get_table(client, ticket))
                expect_rows(f"DoGet {who}", got.num_rows, table.num_rows)
                return t
            return run

        times = interleave([("flight-node", ours_fetch.fetch),
                            ("pyarrow FlightServerBase", peer_fetch.fetch),
                            ("raw loopback TCP", loop.fetch),
                            ("flight-node, client keeps freed memory", ours_kept.fetch),
                            ("pyarrow, client keeps freed memory", peer_kept.fetch),
                            ("flight-node, shared client", shared(node.client, ours_ticket, "ours")),
                            ("pyarrow, shared client", shared(peer.client, peer_ticket, "pyarrow"))],
                           ctx.p["reps"], ctx.p["warmup"])
        stats = node.stats()
    finally:
        if loop:
            loop.close()
        for s in (*fetchers, node, peer, sender):
            s.stop()
    c = {k: summarize(v, nbytes) for k, v in times.items()}
    c["flight-node"].update(ours_fetch.cpu_summary(ctx.p["warmup"]))
    c["pyarrow FlightServerBase"].update(peer_fetch.cpu_summary(ctx.p["warmup"]))
    c["flight-node, client keeps freed memory"].update(ours_kept.cpu_summary(ctx.p["warmup"]))
    c["pyarrow, client keeps freed memory"].update(peer_kept.cpu_summary(ctx.p["warmup"]))
    ours = c["flight-node"]["median_s"]
    ratios = {"doget_vs_pyarrow": c["pyarrow FlightServerBase"]["median_s"] / ours,
              "doget_vs_loopback": c["raw loopback TCP"]["median_s"] / ours,
              "doget_mbps_ours": c["flight-node"]["mbps_median"],
              "doget_mbps_pyarrow": c["pyarrow FlightServerBase"]["mbps_median"],
              "loopback_mbps": c["raw loopback TCP"]["mbps_median"],
              "doget_vs_pyarrow_shared_client": c["pyarrow, shared client"]["median_s"]
              / c["flight-node, shared client"]["median_s"],
              "doget_vs_pyarrow_client_keeps_memory":
              c["pyarrow, client keeps freed memory"]["median_s"]
              / c["flight-node, client keeps freed memory"]["median_s"]}
    for who, key in (("ours", "flight-node"), ("pyarrow", "pyarrow FlightServerBase")):
        ratios[f"doget_client_cpu_ms_{who}"] = (c[key]["client_user_ms"]
                                                 + c[key]["client_sys_ms"])
    section(ctx, "doget", "DoGet of a cached table",
            f"{table.num_rows:,} rows × {table.num_columns} mixed columns, {nbytes / MB:.0f} MB "
            f"of Arrow data, uploaded in {BATCH_ROWS:,}-row batches. Client: pyarrow "
            f"`do_get(...).read_all()`; each server has its own warm client process "
            f"(`peers/flight_fetcher.py`, which also reports the client's CPU time and page "
            f"faults per fetch). The *client keeps freed memory* rows are the same fetchers "
            f"started with `MALLOC_TRIM_THRESHOLD_={CLIENT_KEEPS_MEMORY['MALLOC_TRIM_THRESHOLD_']} "
            f"MALLOC_MMAP_THRESHOLD_={CLIENT_KEEPS_MEMORY['MALLOC_MMAP_THRESHOLD_']}`, so that "
            f"page faults in the client do not decide the result "
            f"(`doget_vs_pyarrow_client_keeps_memory`). The two *shared client* rows fetch "
            f"from both servers in the harness process, alternately. Node cache hits after "
            f"the run: "
            f"{stats.get('hits')}.", c, ratios)


def sc_json(ctx: Ctx) -> None:
    table = mixed_table(ctx.p["json_rows"], seed=11)
    w = ctx.workdir("json")
    pq_path = w / "frame.parquet"
    pq.write_table(table, pq_path)
    df = table.to_pandas()
    arrow_bytes = table.nbytes
    node, jsrv = FlightNode(ctx.binary, w), Server("json-server", w)
    conn = None
    payload = {}
    try:
        node.start()
        port = jsrv.spawn_peer([sys.executable, str(PEERS / "json_server.py"),
                                "--parquet", str(pq_path)])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

        split: dict[str, list[float]] = {"upload": [], "download": []}

        def flight_roundtrip():
            t0 = time.perf_counter()
            up = pa.Table.from_pandas(df, preserve_index=False)
            ticket = put_table(node.client, "bench", "frame", up)["ticket"]
            t1 = time.perf_counter()
            out = get_table(node.client, ticket).to_pandas()
            t2 = time.perf_counter()
            expect_rows("Flight upload+download", len(out), len(df))
            split["upload"].append(t1 - t0)
            split["download"].append(t2 - t1)
            return t2 - t0

        def json_roundtrip():
            def run():
                conn.request("GET", "/data")
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise HarnessError(f"JSON server answered {resp.status}")
                payload["bytes"] = len(body)
                return pd.read_json(io.BytesIO(body), orient="records")
            t, out = timed(run)
            expect_rows("JSON download", len(out), len(df))
            return t

        times = interleave([("flight-node (from_pandas, DoPut, DoGet, to_pandas)", flight_roundtrip),
                            ("pandas to_json → HTTP → read_json", json_roundtrip)],
                           ctx.p["reps"], ctx.p["warmup"])
    finally:
        if conn:
            conn.close()
        node.stop()
        jsrv.stop()
    names = list(times)
    c = {k: summarize(v, arrow_bytes) for k, v in times.items()}
    w_ = ctx.p["warmup"]
    up_s, down_s = (statistics.median(split[k][w_:]) for k in ("upload", "download"))
    ratios = {"flight_vs_json": c[names[1]]["median_s"] / c[names[0]]["median_s"],
              "json_mbps": c[names[1]]["mbps_median"],
              "flight_roundtrip_mbps": c[names[0]]["mbps_median"],
              "flight_upload_s": up_s, "flight_download_s": down_s,
              "flight_download_only_vs_json": c[names[1]]["median_s"] / down_s}
    section(ctx, "json", "Flight vs JSON: time to a usable DataFrame",
            f"A pandas DataFrame of {len(df):,} rows ({arrow_bytes / MB:.1f} MB as Arrow; "
            f"{payload.get('bytes', 0) / MB:.1f} MB as JSON records). JSON: a separate HTTP server "
            f"process serializes with `to_json(orient=\"records\")` per request, the harness "
            f"parses with `read_json`. Flight: the harness uploads the same frame to flight-node "
            f"(durable write included) and downloads it back to pandas. MB/s are Arrow bytes. "
            f"`flight_upload_s` (from_pandas + DoPut) and `flight_download_s` (DoGet + "
            f"to_pandas) split our median; `flight_download_only_vs_json` compares the read "
            f"side alone.",
            c, ratios)


def sc_doput(ctx: Ctx) -> None:
    table = ctx.big_table()
    nbytes = table.nbytes
    w = ctx.workdir("doput")
    node, peer = FlightNode(ctx.binary, w), PyarrowPeer(w)
    try:
        node.start()
        peer.start()

        def upload(client, drop, who):
            def run():
                t, res = timed(lambda: put_table(client, "bench", "doput", table))
                expect_rows(f"DoPut {who}", int(res.get("rows", table.num_rows)), table.num_rows)
                drop()  # untimed: keep memory and disk flat between repetitions
                return t
            return run

        times = interleave(
            [("flight-node (file storage, durable)",
              upload(node.client, lambda: node.action("delete", {"namespace": "bench", "name": "doput"}), "ours")),
             ("pyarrow FlightServerBase (memory only)",
              upload(peer.client, lambda: peer.action("delete", {"namespace": "bench", "name": "doput"}), "pyarrow"))],
            ctx.p["reps"], ctx.p["warmup"])
    finally:
        node.stop()
        peer.stop()
    names = list(times)
    c = {k: summarize(v, nbytes) for k, v in times.items()}
    ratios = {"doput_vs_pyarrow": c[names[1]]["median_s"] / c[names[0]]["median_s"],
              "doput_mbps_ours": c[names[0]]["mbps_median"],
              "doput_mbps_pyarrow": c[names[1]]["mbps_median"]}
    section(ctx, "doput", "DoPut of the table",
            f"The same {nbytes / MB:.0f} MB table uploaded in {BATCH_ROWS:,}-row batches; timed "
            f"until the PutResult arrives. Ours writes Parquet parts and the manifest to a local "
            f"directory before answering; the peer only keeps the batches in memory.", c, ratios)


def sc_csv(ctx: Ctx) -> None:
    table = table_of_mb(ctx.p["csv_mb"] * 0.55, seed=13)  # CSV text is ~1.8× the Arrow size
    w = ctx.workdir("csv")
    path = w / "data.csv"
    pacsv.write_csv(table, path)
    size = path.stat().st_size
    node = FlightNode(ctx.binary, w)
    try:
        node.start()

        def ours():
            conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=600,
                                              blocksize=1 << 20)
            with open(path, "rb") as f:
                t0 = time.perf_counter()
                conn.request("POST", "/v1/datasets/bench/csv", body=f,
                             headers={"Content-Type": "text/csv", "Content-Length": str(size)})
                resp = conn.getresponse()
                body = resp.read()
                t = time.perf_counter() - t0
            conn.close()
            if resp.status != 201:
                raise HarnessError(f"CSV upload answered {resp.status}: {body[:300]!r}")
            expect_rows("CSV upload", json.loads(body)["rows"], table.num_rows)
            node.action("delete", {"namespace": "bench", "name": "csv"})  # untimed
            return t

        def with_rows(what, fn):
            def run():
                t, out = timed(fn)
                expect_rows(what, len(out), table.num_rows)
                return t
            return run

        def read_then_write():
            # The same work as ours: parse, then a Parquet file on local disk.
            t = pacsv.read_csv(path)
            pq.write_table(t, w / "pyarrow-out.parquet")
            return t

        times = interleave([("flight-node HTTP CSV upload (streaming, durable)", ours),
                            ("pyarrow.csv.read_csv", with_rows("pyarrow.csv", lambda: pacsv.read_csv(path))),
                            ("pandas.read_csv", with_rows("pandas", lambda: pd.read_csv(path))),
                            ("pyarrow.csv.read_csv + parquet.write_table",
                             with_rows("pyarrow.csv + Parquet", read_then_write))],
                           ctx.p["reps"], ctx.p["warmup"])
    finally:
        node.stop()
    names = list(times)
    c = {k: summarize(v, size) for k, v in times.items()}
    ours_s = c[names[0]]["median_s"]
    ratios = {"csv_vs_pyarrow": c[names[1]]["median_s"] / ours_s,
              "csv_vs_pandas": c[names[2]]["median_s"] / ours_s,
              "csv_vs_pyarrow_to_parquet": c[names[3]]["median_s"] / ours_s,
              "csv_mbps_ours": c[names[0]]["mbps_median"],
              "csv_mbps_pyarrow": c[names[1]]["mbps_median"],
              "csv_mbps_pandas": c[names[2]]["mbps_median"]}
    section(ctx, "csv", "CSV ingest",
            f"One CSV file of {size / MB:.0f} MB ({table.num_rows:,} rows; ints, floats, quoted "
            f"strings, timestamps, booleans), in the page cache. Ours: HTTP POST of the file "
            f"(streamed, parsed to Arrow in chunks, written as Parquet before the 201). Peers: "
            f"parse the same file into memory in the harness process (both cores available); "
            f"the last one also writes the table to a local Parquet file, the same work as "
            f"ours (`csv_vs_pyarrow_to_parquet`). MB/s are CSV bytes.", c, ratios)


class Moto(Server):
    def start(self) -> str:
        port = free_port()
        exe = VENV_BIN / "moto_server"
        if not exe.exists():
            raise HarnessError(f"moto_server not found next to {sys.executable}")
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                         stdout=logf, stderr=subprocess.STDOUT)
        _PROCS.append(self.proc)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise HarnessError(f"moto_server exited:\n{self.log_tail()}")
            try:
                http_request(f"{endpoint}/", timeout=1.0)
                return endpoint
            except OSError:
                if time.monotonic() > deadline:
                    raise HarnessError("moto_server did not start")
                time.sleep(0.1)


MINIO_SCRIPT = REPO / "tests" / "minio" / "minio"
MINIO_BIN = REPO / "target" / "minio" / "bin" / "minio"


class S3Target:
    """The S3 server of the cold scenario: MinIO when there is one (the server named by
    MINIO_* in the environment, as `make test` exports, or one started here from the binary
    `tests/minio/minio build` makes), otherwise moto_server. `name` says which."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.moto: Moto | None = None
        self.state: Path | None = None
        self.name = ""

    def start(self) -> dict:
        """Returns endpoint, bucket, access and secret key."""
        env = os.environ
        if env.get("MINIO_ENDPOINT") and env.get("MINIO_ACCESS_KEY"):
            self.name = "MinIO (the test server)"
            return {"endpoint": env["MINIO_ENDPOINT"], "bucket": env.get("MINIO_BUCKET", "trinity"),
                    "key": env["MINIO_ACCESS_KEY"], "secret": env["MINIO_SECRET_KEY"]}
        if MINIO_BIN.exists() or os.environ.get("MINIO_BIN"):
            self.state = self.workdir / "minio-state"
            out = subprocess.run([str(MINIO_SCRIPT), "up"], capture_output=True, text=True,
                                 env={**env, "MINIO_STATE_DIR": str(self.state),
                                      "MINIO_PYTHON": sys.executable})
            if out.returncode != 0:
                raise HarnessError(f"tests/minio/minio up failed:\n{out.stderr[-2000:]}")
            kv = dict(line.split("=", 1) for line in (self.state / "env").read_text().splitlines()
                      if "=" in line and not line.startswith("#"))
            self.name = "MinIO"
            return {"endpoint": kv["MINIO_ENDPOINT"], "bucket": kv["MINIO_BUCKET"],
                    "key": kv["MINIO_ACCESS_KEY"], "secret": kv["MINIO_SECRET_KEY"]}
        self.moto = Moto("moto-server", self.workdir)
        endpoint = self.moto.start()
        import boto3
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                     aws_secret_access_key="test", region_name="us-east-1").create_bucket(
            Bucket="bench")
        self.name = "moto_server (no MinIO binary: run tests/minio/minio build)"
        return {"endpoint": endpoint, "bucket": "bench", "key": "test", "secret": "test"}

    def stop(self) -> None:
        if self.moto:
            self.moto.stop()
        if self.state:
            subprocess.run([str(MINIO_SCRIPT), "down"], capture_output=True,
                           env={**os.environ, "MINIO_STATE_DIR": str(self.state)})


def sc_cold(ctx: Ctx) -> None:
    table = ctx.big_table() if ctx.p["cold_mb"] == ctx.p["big_mb"] else table_of_mb(ctx.p["cold_mb"])
    nbytes = table.nbytes
    w = ctx.workdir("cold")
    s3 = S3Target(w)
    node = None
    try:
        t = s3.start()
        import boto3
        client = boto3.client("s3", endpoint_url=t["endpoint"], aws_access_key_id=t["key"],
                              aws_secret_access_key=t["secret"], region_name="us-east-1")
        prefix = f"bench-{os.getpid()}-{int(time.time())}"
        creds = {"AWS_ACCESS_KEY_ID": t["key"], "AWS_SECRET_ACCESS_KEY": t["secret"],
                 "AWS_REGION": "us-east-1"}
        node = FlightNode(ctx.binary, w, storage_url=f"s3://{t['bucket']}/{prefix}",
                          args=["--storage-endpoint", t["endpoint"], "--allow-http"], env=creds)
        node.start()
        t_up, res = timed(lambda: put_table(node.client, "bench", "cold", table))
        ticket = res["ticket"]
        manifest = json.loads(client.get_object(
            Bucket=t["bucket"],
            Key=f"{prefix}/bench/cold/v{res['version']}.manifest.json")["Body"].read())
        paths = [f"{t['bucket']}/{prefix}/{p['path']}" for p in manifest["parts"]]
        stored = manifest.get("storedBytes", 0)
        fs = pafs.S3FileSystem(endpoint_override=t["endpoint"].removeprefix("http://"),
                               scheme="http", access_key=t["key"], secret_key=t["secret"],
                               region="us-east-1")

        def ours():
            node.action("evict", {"namespace": "bench", "name": "cold"})  # untimed
            misses = node.stats().get("misses", 0)
            t, got = timed(lambda: get_table(node.client, ticket))
            expect_rows("cold DoGet", got.num_rows, table.num_rows)
            if node.stats().get("misses", 0) < misses + 1:
                raise HarnessError("cold DoGet was not a cache miss (evict did not take)")
            return t

        def peer():
            t, got = timed(lambda: pq.read_table(paths, filesystem=fs))
            expect_rows("pyarrow.parquet.read_table", got.num_rows, table.num_rows)
            return t

        times = interleave([("flight-node cold DoGet (evict, then DoGet)", ours),
                            ("pyarrow.parquet.read_table (same objects)", peer)],
                           ctx.p["reps"], ctx.p["warmup"])
        node.action("delete", {"namespace": "bench", "name": "cold"})
    finally:
        if node:
            node.stop()
        s3.stop()
    names = list(times)
    c = {k: summarize(v, nbytes) for k, v in times.items()}
    ratios = {"cold_vs_pyarrow_parquet": c[names[1]]["median_s"] / c[names[0]]["median_s"],
              "cold_mbps_ours": c[names[0]]["mbps_median"],
              "cold_mbps_pyarrow_parquet": c[names[1]]["mbps_median"]}
    section(ctx, "cold", f"Cold DoGet from Parquet on S3 ({s3.name.split(' (')[0]})",
            f"The {nbytes / MB:.0f} MB table uploaded once to a node with `s3://` storage on "
            f"{s3.name} on this machine ({len(paths)} Parquet part(s), {stored / MB:.0f} MB "
            f"stored; upload took {t_up:.1f} s). Ours: `evict` (untimed), then a timed DoGet "
            f"to the harness (pyarrow's client, one stream). Peer: `pyarrow.parquet.read_table` "
            f"of the same objects through `pyarrow.fs.S3FileSystem` in the harness process. "
            f"MB/s are Arrow bytes.",
            c, ratios)


def sc_pool(ctx: Ctx) -> None:
    """Aggregate read of a multi-part version from a 3-node pool (each part from its owner)
    vs the same read from one node holding the whole version."""
    import trinity_flight

    table = ctx.big_table()
    nbytes = table.nbytes
    w = ctx.workdir("pool")
    storage = w / "shared-data"
    storage.mkdir(exist_ok=True)
    parts_wanted = 24
    part_mib = max(1, int(nbytes / parts_wanted / MIB))
    ports = [free_port() for _ in range(3)]
    uris = [f"grpc://127.0.0.1:{p}" for p in ports]
    peers = w / "peers.yaml"
    peers.write_text("peers:\n" + "".join(f"  - {u}\n" for u in uris))
    # Each pool node's cache holds 3/4 of its memory limit: room for its third and more.
    pool_limit = f"{max(64, int(nbytes / MIB))}MiB"
    nodes: list[FlightNode] = []
    single = None
    try:
        for i, port in enumerate(ports):
            n = FlightNode(ctx.binary, w, storage_url=f"file://{storage}", name=f"pool-node-{i}",
                           args=["--memory-limit", pool_limit, "--part-size", f"{part_mib}MiB",
                                 "--advertise-uri", uris[i], "--peers-file", str(peers)])
            nodes.append(n.start(grpc_port=port))
        single = FlightNode(ctx.binary, w, name="one-node",
                            args=["--part-size", f"{part_mib}MiB"]).start()
        pool_ticket = put_table(nodes[0].client, "bench", "pooled", table)["ticket"]
        one_ticket = put_table(single.client, "bench", "pooled", table)["ticket"]
        pool_client = trinity_flight.Client(nodes[0].uri, max_workers=6)
        one_client = trinity_flight.Client(single.uri, max_workers=6)
        # Warm: every owner loads its parts; the single node holds the whole version.
        answer = json.loads(nodes[0].action("preload", {"namespace": "bench", "name": "pooled"})[0])
        if not answer.get("cached"):
            raise HarnessError(f"the pool did not hold the whole version: {answer}")
        parts = answer["parts"]
        held = {n["node"]: n["cached"] for n in answer["nodes"]}

        def read(client, ticket):
            def run():
                t, got = timed(lambda: client.download_table(ticket))
                expect_rows("parallel read", got.num_rows, table.num_rows)
                return t
            return run

        times = interleave([("3-node pool: parts in parallel from their owners",
                             read(pool_client, pool_ticket)),
                            ("1 node: the same parts in parallel from one node",
                             read(one_client, one_ticket))],
                           ctx.p["reps"], ctx.p["warmup"])
        pool_client.close()
        one_client.close()
    finally:
        for n in nodes:
            n.stop()
        if single:
            single.stop()
    names = list(times)
    c = {k: summarize(v, nbytes) for k, v in times.items()}
    ratios = {"pool_vs_one_node": c[names[1]]["median_s"] / c[names[0]]["median_s"],
              "pool_mbps": c[names[0]]["mbps_median"],
              "one_node_mbps": c[names[1]]["mbps_median"]}
    spread = ", ".join(f"{held.get(u, 0)}" for u in uris)
    section(ctx, "pool", "A pool is one memory: parallel read from 3 nodes vs 1 node",
            f"The {nbytes / MB:.0f} MB table as {parts} parts of {part_mib} MiB. Ours: three "
            f"nodes on one machine sharing a `file://` storage, loopback URIs in a peers file, "
            f"each with --memory-limit {pool_limit} (parts held per node after `preload`: "
            f"{spread}); `trinity_flight.Client.download_table` (6 workers) reads every "
            f"endpoint from its owner. Peer: the same client against one node holding the "
            f"whole version. Both warm. On one machine the nodes, the client and the loopback "
            f"share two cores: the ratio shows what spreading costs or saves here, not how a "
            f"pool of real machines scales (bench/README.md estimates that).",
            c, ratios)


class AtomReader(Server):
    """An atom in its own process (`peers/atom_reader.py`): `read(...)` asks it for one or
    more ticket-to-DataFrame reads and returns the seconds each took."""

    def __init__(self, name: str, workdir: Path, mode: str, uri: str, env: dict | None = None):
        super().__init__(name, workdir)
        # The client as checked out, not a copy installed earlier.
        path = os.pathsep.join(filter(None, [str(CLIENT_SRC), os.environ.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, str(PEERS / "atom_reader.py"), mode, uri],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=logf, text=True, bufsize=1,
                                         env={**os.environ, **(env or {}), "PYTHONPATH": path})
        _PROCS.append(self.proc)
        if self._line() != "ready":
            raise HarnessError(f"{name} did not start:\n{self.log_tail()}")
        # What each read built, by what it read (the harness compares contenders).
        self.fingerprints: dict[str, set[str]] = {}

    def _line(self) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT * 4)
        return self.proc.stdout.readline().strip() if ready else ""

    def read(self, ticket: str, rows: int, columns: list[str] | None = None,
             limit: int | None = None, repeat: int = 1, what: str = "") -> list[float]:
        req = {"ticket": ticket, "columns": columns, "limit": limit, "repeat": repeat}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        status, _, body = self._line().partition(" ")
        if status != "ok":
            raise HarnessError(f"{self.name}: {body or 'no answer'}\n{self.log_tail()}")
        answer = json.loads(body)
        expect_rows(self.name, answer["rows"], rows)
        if columns is not None and answer["columns"] != len(columns):
            raise HarnessError(f"{self.name}: {answer['columns']} columns, asked {len(columns)}")
        self.fingerprints.setdefault(what or ticket, set()).add(answer["fingerprint"])
        return answer["times"]


def wide_table(mb: float) -> pa.Table:
    """Twelve columns: two mixed tables side by side (the second's names end in `_b`)."""
    rows = max(1_000, int(mb * MB / (2 * MIXED_ROW_BYTES)))
    a, b = mixed_table(rows, seed=7), mixed_table(rows, seed=8)
    return pa.table({**{n: a.column(n) for n in a.column_names},
                     **{f"{n}_b": b.column(n) for n in b.column_names}})


def sc_atom(ctx: Ctx) -> None:
    """What an atom does: ticket to pandas DataFrame; two of twelve columns; a preview."""
    table = ctx.big_table()
    wide = wide_table(ctx.p["big_mb"])
    chosen = ["qty", "price_b"]
    w = ctx.workdir("atom")
    node, peer = FlightNode(ctx.binary, w), PyarrowPeer(w)
    readers: list[AtomReader] = []
    try:
        node.start()
        peer.start()
        ours_ticket = put_table(node.client, "bench", "atom", table)["ticket"]
        wide_ticket = put_table(node.client, "bench", "wide", wide)["ticket"]
        peer_ticket = put_table(peer.client, "bench", "atom", table)["ticket"]
        parts = len(node.client.get_flight_info(
            flight.FlightDescriptor.for_path("bench", "atom")).endpoints)
        ours = AtomReader("atom-trinity-flight", w, "trinity", node.uri)
        theirs = AtomReader("atom-pyarrow", w, "pyarrow", peer.uri)
        ours_kept = AtomReader("atom-trinity-flight-kept", w, "trinity", node.uri,
                               env=CLIENT_KEEPS_MEMORY)
        theirs_kept = AtomReader("atom-pyarrow-kept", w, "pyarrow", peer.uri,
                                 env=CLIENT_KEEPS_MEMORY)
        readers += [ours, theirs, ours_kept, theirs_kept]
        rows, wrows = table.num_rows, wide.num_rows

        def one(reader, ticket, n, **kw):
            return lambda: reader.read(ticket, n, **kw)[0]

        times = interleave([
            ("trinity_flight.download_dataframe", one(ours, ours_ticket, rows, what="atom")),
            ("pyarrow do_get + to_pandas (pyarrow server)",
             one(theirs, peer_ticket, rows, what="atom")),
            ("trinity_flight, client keeps freed memory",
             one(ours_kept, ours_ticket, rows, what="atom")),
            ("pyarrow, client keeps freed memory", one(theirs_kept, peer_ticket, rows, what="atom")),
            ("download_dataframe, 12 of 12 columns", one(ours, wide_ticket, wrows)),
            (f"download_dataframe, columns={chosen}",
             one(ours, wide_ticket, wrows, columns=chosen)),
        ], ctx.p["reps"], ctx.p["warmup"])
        built = [r.fingerprints["atom"] for r in (ours, theirs, ours_kept, theirs_kept)]
        if len(set().union(*built)) != 1:
            raise HarnessError(f"the readers built different DataFrames: {built}")
        calls = ctx.p["latency_calls"] // 5 or 1
        ours.read(wide_ticket, 1_000, limit=1_000, repeat=5)  # warm-up
        preview = [t * 1000 for t in ours.read(wide_ticket, 1_000, limit=1_000, repeat=calls)]
    finally:
        for s in (*readers, node, peer):
            s.stop()
    names = list(times)
    c = {k: summarize(v, table.nbytes if i < 4 else wide.nbytes) for i, (k, v) in
         enumerate(times.items())}
    sel_bytes = wide.select(chosen).nbytes
    c[names[5]] = summarize(times[names[5]], sel_bytes)
    c["preview: download_dataframe(limit=1000) of the 12-column table"] = {
        "p50_ms": float(np.percentile(preview, 50)), "p95_ms": float(np.percentile(preview, 95)),
        "min_ms": min(preview), "max_ms": max(preview), "calls": len(preview)}
    med = {k: c[k]["median_s"] for k in names}
    ratios = {"atom_read_vs_pyarrow": med[names[1]] / med[names[0]],
              "atom_read_vs_pyarrow_client_keeps_memory": med[names[3]] / med[names[2]],
              "projection_2_of_12_vs_full": med[names[4]] / med[names[5]],
              "projection_bytes_share": sel_bytes / wide.nbytes,
              "preview_p50_ms": float(np.percentile(preview, 50)),
              "preview_p95_ms": float(np.percentile(preview, 95))}
    section(ctx, "atom", "Ticket to pandas DataFrame, projection and previews",
            f"What an atom does. The {table.nbytes / MB:.0f} MB mixed table ({rows:,} rows; "
            f"{parts} parts on the node) read into a DataFrame: ours "
            f"`trinity_flight.Client.download_dataframe(ticket)` from a node; peer: pyarrow's "
            f"`FlightClient.do_get(ticket).read_all().to_pandas()` from pyarrow's own server. "
            f"Each contender is its own warm process (`peers/atom_reader.py`); the harness "
            f"checks that both built the same DataFrame (dtypes, shape, sampled rows). The "
            f"*client keeps freed memory* rows are the same readers started with glibc "
            f"keeping freed memory (see the DoGet section). Projection: a twelve-column "
            f"table of {wide.nbytes / MB:.0f} MB ({wrows:,} rows), read whole and as "
            f"`columns={chosen}` ({sel_bytes / wide.nbytes:.0%} of its bytes, so "
            f"{wide.nbytes / sel_bytes:.1f}x is what sending less alone could give). "
            f"Preview: `download_dataframe(ticket, limit=1000)` of the twelve-column table, "
            f"{len(preview)} calls after 5 warm-up calls.",
            c, ratios)


def sc_latency(ctx: Ctx) -> None:
    table = mixed_table(ctx.p["small_rows"], seed=17)
    w = ctx.workdir("latency")
    node, peer = FlightNode(ctx.binary, w), PyarrowPeer(w)
    try:
        node.start()
        peer.start()
        t_ours = put_table(node.client, "bench", "small", table)["ticket"].encode()
        t_peer = put_table(peer.client, "bench", "small", table)["ticket"].encode()
        lat: dict[str, list[float]] = {"flight-node": [], "pyarrow FlightServerBase": []}
        pairs = [("flight-node", node.client, t_ours), ("pyarrow FlightServerBase", peer.client, t_peer)]
        n_warm, n = ctx.p["latency_warmup"], ctx.p["latency_calls"]
        for i in range(n_warm + n):
            for name, client, ticket in pairs:
                t0 = time.perf_counter()
                got = client.do_get(flight.Ticket(ticket)).read_all()
                t = time.perf_counter() - t0
                expect_rows(f"small DoGet {name}", got.num_rows, table.num_rows)
                if i >= n_warm:
                    lat[name].append(t * 1000)
    finally:
        node.stop()
        peer.stop()
    c = {}
    for name, v in lat.items():
        c[name] = {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)),
                   "min_ms": min(v), "max_ms": max(v), "calls": len(v)}
    ours, theirs = c["flight-node"], c["pyarrow FlightServerBase"]
    ratios = {"latency_p50_ms_ours": ours["p50_ms"], "latency_p50_ms_pyarrow": theirs["p50_ms"],
              "latency_p99_ms_ours": ours["p99_ms"], "latency_p99_ms_pyarrow": theirs["p99_ms"],
              "latency_p50_vs_pyarrow": theirs["p50_ms"] / ours["p50_ms"]}
    section(ctx, "latency", "Small-table DoGet latency",
            f"{table.num_rows:,}-row table ({table.nbytes / 1000:.0f} kB); {n} DoGets per server "
            f"after {n_warm} warm-up calls, alternating calls between the two servers on one "
            f"pyarrow client connection each; time from `do_get` to `read_all` returned.",
            c, ratios)


def sc_memory(ctx: Ctx) -> None:
    table = ctx.big_table()
    w = ctx.workdir("memory")
    node, peer = FlightNode(ctx.binary, w), PyarrowPeer(w)
    try:
        node.start()
        peer.start()
        time.sleep(0.3)
        rss_empty, peer_empty = node.rss(), peer.rss()
        res = put_table(node.client, "bench", "mem", table)
        put_table(peer.client, "bench", "mem", table)
        time.sleep(0.5)
        rss = node.rss()
        cached = node.stats()["memoryUsed"]
        peer_rss = peer.rss()
        extras = [doget_peak(node, res["ticket"], table.num_rows) for _ in range(ctx.p["mem_gets"])]
        # Cold reload from local Parquet: the cache as a restarted node would fill it.
        node.action("evict", {"namespace": "bench", "name": "mem"})
        get_table(node.client, res["ticket"])
        time.sleep(0.5)
        rss_reload, cached_reload = node.rss(), node.stats()["memoryUsed"]
    finally:
        node.stop()
        peer.stop()
    if cached <= 0:
        raise HarnessError(f"stats memoryUsed is {cached} after the upload")
    extra_med = statistics.median(extras)
    c = {
        "flight-node": {"rss_empty_mib": rss_empty / MIB, "rss_mib": rss / MIB,
                        "cached_mib": cached / MIB, "rss_ratio": rss / cached,
                        "doget_extra_rss_mib": extra_med, "doget_extra_rss_mib_max": max(extras),
                        "rss_after_reload_mib": rss_reload / MIB,
                        "rss_ratio_after_reload": rss_reload / max(cached_reload, 1)},
        "pyarrow FlightServerBase": {"rss_empty_mib": peer_empty / MIB, "rss_mib": peer_rss / MIB,
                                     "cached_mib": table.nbytes / MIB,
                                     "rss_ratio": peer_rss / table.nbytes},
    }
    ratios = {"rss_ratio": rss / cached, "rss_mib_ours": rss / MIB, "cached_mib_ours": cached / MIB,
              "rss_empty_mib_ours": rss_empty / MIB, "doget_extra_rss_mib": extra_med,
              "doget_extra_rss_mib_max": max(extras),
              "rss_ratio_after_reload": rss_reload / max(cached_reload, 1),
              "rss_ratio_pyarrow": peer_rss / table.nbytes}
    section(ctx, "memory", "Memory: resident size vs cached Arrow bytes",
            f"The {table.nbytes / MB:.0f} MB table uploaded; RSS from /proc/<pid>/status VmRSS, "
            f"cached bytes from the `stats` action (`memoryUsed`; for pyarrow, the table's "
            f"`nbytes`). `rss_ratio` = RSS ÷ cached bytes (including the process's empty "
            f"baseline). Extra RSS during a DoGet: peak RSS (VmHWM after resetting it through "
            f"/proc/<pid>/clear_refs, and 1 ms sampling) minus RSS before, median of "
            f"{len(extras)} DoGet(s). After reload: `evict`, then a cold DoGet from local Parquet.",
            c, ratios)


def doget_peak(node: FlightNode, ticket: str, rows: int) -> float:
    """Extra resident MiB of the node while one DoGet of `ticket` streams (client discards
    batches as they arrive)."""
    pid = node.pid
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        hwm_ok = True
    except OSError:
        hwm_ok = False
    before = proc_status(pid)["VmRSS"]
    peak = [before]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc_status(pid)["VmRSS"])
            except OSError:
                return
            time.sleep(0.001)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    n = 0
    for chunk in node.client.do_get(flight.Ticket(ticket.encode())):
        n += chunk.data.num_rows
    stop.set()
    th.join()
    expect_rows("DoGet (memory)", n, rows)
    hwm = proc_status(pid).get("VmHWM", 0) if hwm_ok else 0
    return (max(peak[0], hwm) - before) / MIB


SCENARIO_FNS = {"doget": sc_doget, "json": sc_json, "doput": sc_doput, "csv": sc_csv,
                "atom": sc_atom, "cold": sc_cold, "latency": sc_latency, "memory": sc_memory, "pool": sc_pool}


# ----- report --------------------------------------------------------------------------------


def sh(cmd: list[str], cwd=None) -> str:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:
        return ""


def machine_info(binary: Path) -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    # FLIGHT_NODE_COMMIT: the commit a binary outside this checkout was built from.
    override = os.environ.get("FLIGHT_NODE_COMMIT", "").strip()
    rev = override or "HEAD"
    commit = sh(["git", "rev-parse", "--short=12", rev], cwd=REPO) or override
    node_commit = sh(["git", "log", "-1", "--format=%h %s", rev, "--", "flight-node"], cwd=REPO)
    dirty = not override and bool(sh(["git", "status", "--porcelain", "--", "flight-node",
                                      "Cargo.toml", "Cargo.lock"], cwd=REPO))
    return {
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
        "memory_gib": round(mem / (1 << 30), 1), "kernel": platform.release(),
        "python": platform.python_version(), "pyarrow": pa.__version__, "pandas": pd.__version__,
        "numpy": np.__version__, "rustc": sh(["rustc", "--version"]),
        "commit": commit + (" (flight-node has uncommitted changes)" if dirty else ""),
        "node_last_change": node_commit,
        "binary": str(binary),
        "binary_built": dt.datetime.fromtimestamp(binary.stat().st_mtime).isoformat(timespec="seconds"),
        "node_flags": " ".join(NODE_FLAGS),
    }


def target_mark(key: str, value) -> tuple[str, str]:
    t = TARGETS.get(key)
    if t is None or value is None:
        return "—", ""
    op, v = t
    ok = value >= v if op == ">=" else value <= v
    return f"{op} {v:g}", "pass" if ok else "short"


def fmt(v, digits=2) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def write_report(ctx: Ctx, meta: dict, errors: dict, out_md: Path, png_name: str | None) -> None:
    L = []
    m = meta["machine"]
    L.append(f"# flight-node benchmarks — {meta['date']} ({ctx.profile})")
    L.append("")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM, "
             f"Linux {m['kernel']}")
    L.append(f"- Load average at start: {meta['load_start']}; at end: {meta['load_end']}. "
             f"Servers and the client share these cores, and other work may run on the machine "
             f"at the same time: compare ratios within one run, not absolute numbers across runs.")
    L.append(f"- Versions: Python {m['python']}, pyarrow {m['pyarrow']}, pandas {m['pandas']}, "
             f"numpy {m['numpy']}, {m['rustc']}")
    L.append(f"- Repository at {m['commit']}; last change to flight-node: "
             f"{m.get('node_last_change', '')}")
    L.append(f"- Binary {m['binary']} built {m['binary_built']}; "
             f"flags `{m['node_flags']}`")
    L.append(f"- Method: every scenario runs ours and its peer in the same run, interleaved "
             f"(ours, peer, ours, peer, …), {ctx.p['reps']} measured repetition(s) after "
             f"{ctx.p['warmup']} discarded warm-up; servers are separate processes, the client is "
             f"the harness process (pyarrow {m['pyarrow']}). Medians with min–max. Wall time "
             f"{meta['elapsed_s']:.0f} s.")
    L.append("")
    L.append("## Summary")
    L.append("")
    L.append("| metric | value | target | |")
    L.append("|---|---:|---:|---|")
    keys = SUMMARY_RATIOS + ["rss_ratio", "doget_extra_rss_mib"] + SUMMARY_MS + [
        "preview_p95_ms", "latency_p99_ms_ours", "latency_p99_ms_pyarrow"]
    for k in keys:
        v = ctx.results.get(k)
        tgt, mark = target_mark(k, v)
        L.append(f"| `{k}` | {fmt(v)} | {tgt} | {mark} |")
    L.append("")
    L.append("Speed ratios are ours ÷ peer (peer time ÷ our time): > 1 means flight-node is "
             "faster. `rss_ratio` is resident size ÷ cached Arrow bytes (lower is better).")
    if png_name:
        L.append("")
        L.append(f"![ratios vs targets]({png_name})")
    if errors:
        L.append("")
        L.append("## Failed scenarios")
        L.append("")
        for k, e in errors.items():
            L.append(f"- `{k}`: {e.splitlines()[-1] if e else 'error'}")
    for key in SCENARIOS:
        s = ctx.sections.get(key)
        if not s:
            continue
        L.append("")
        L.append(f"## {s['title']} (`{key}`)")
        L.append("")
        L.append(s["what"])
        L.append("")
        timed_ = {n: c for n, c in s["contenders"].items() if "median_s" in c}
        other = {n: c for n, c in s["contenders"].items() if "median_s" not in c}
        if timed_:
            has_mbps = all("mbps_median" in c for c in timed_.values())
            L.append("| contender | median s | min–max s |" + (" median MB/s | min–max MB/s |" if has_mbps else ""))
            L.append("|---|---:|---:|" + ("---:|---:|" if has_mbps else ""))
            for name, c in timed_.items():
                row = f"| {name} | {c['median_s']:.3f} | {c['min_s']:.3f}–{c['max_s']:.3f} |"
                if has_mbps:
                    row += f" {c['mbps_median']:,.0f} | {c['mbps_min']:,.0f}–{c['mbps_max']:,.0f} |"
                L.append(row)
        if timed_ and other:
            L.append("")
        if other:
            cols = list(next(iter(other.values())).keys())
            L.append("| contender | " + " | ".join(cols) + " |")
            L.append("|---|" + "---:|" * len(cols))
            for name, c in other.items():
                L.append(f"| {name} | " + " | ".join(fmt(c.get(k)) for k in cols) + " |")
        L.append("")
        for k, v in s["ratios"].items():
            tgt, mark = target_mark(k, v)
            suffix = f" (target {tgt}: **{mark}**)" if mark else ""
            L.append(f"- `{k}` = {fmt(v)}{suffix}")
    out_md.write_text("\n".join(L) + "\n")


def write_plot(results: dict, out_png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no plot")
        return False
    keys = [k for k in SUMMARY_RATIOS + ["rss_ratio"] if results.get(k) is not None]
    ms_keys = [k for k in SUMMARY_MS if results.get(k) is not None]
    if not keys and not ms_keys:
        return False
    fig, (ax, ax_ms) = plt.subplots(1, 2, figsize=(14, 5.5),
                                    gridspec_kw={"width_ratios": [max(1, len(keys)), 3]})

    def bars(ax, keys, log):
        vals = [results[k] for k in keys]
        colors = [{"pass": "#2e7d32", "short": "#e65100"}.get(target_mark(k, v)[1], "#607d8b")
                  for k, v in zip(keys, vals)]
        x = np.arange(len(keys))
        ax.bar(x, vals, color=colors, width=0.6)
        for i, k in enumerate(keys):
            t = TARGETS.get(k)
            if t:
                ax.hlines(t[1], i - 0.4, i + 0.4, colors="black", linestyles="dashed",
                          linewidth=1.5)
                ax.annotate(f"target {t[0]} {t[1]:g}", (i, t[1]), textcoords="offset points",
                            xytext=(0, 4), ha="center", fontsize=7)
        if log:
            ax.set_yscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{k.replace('_vs_', ' vs ')}\n{v:.2f}" for k, v in zip(keys, vals)],
                           fontsize=7, rotation=30, ha="right")

    bars(ax, keys, log=True)
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_ylabel("ratio (log scale)")
    ax.set_title("speed ratios: ours ÷ peer, > 1 = ours faster; rss_ratio: lower is better",
                 fontsize=9)
    bars(ax_ms, ms_keys, log=False)
    ax_ms.set_ylabel("milliseconds (p50)")
    ax_ms.set_title("latency: lower is better", fontsize=9)
    fig.suptitle("flight-node vs peers (green: target met, orange: short, grey: no target)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


# ----- main ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller tables, fewer repetitions (< 3 min)")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny tables, 1 repetition: checks the harness end to end (seconds); "
                           "writes to a temporary directory")
    ap.add_argument("--only", help=f"comma-separated scenarios among {','.join(SCENARIOS)}")
    ap.add_argument("--json", metavar="FILE", help="also write the results JSON to FILE")
    ap.add_argument("--out", metavar="DIR",
                    help="results directory (default bench/results for full and --quick runs of "
                         "all scenarios, a temporary directory for --smoke and --only)")
    ap.add_argument("--binary", default=os.environ.get("FLIGHT_NODE_BIN",
                                                      str(REPO / "target" / "release" / "flight-node")))
    ap.add_argument("--reps", type=int, help="measured repetitions per scenario (overrides the profile)")
    ap.add_argument("--big-mb", type=float,
                    help="size of the DoGet/DoPut/memory/cold table in MB (overrides the profile)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch directory (logs, data)")
    args = ap.parse_args(argv)

    profile = "smoke" if args.smoke else "quick" if args.quick else "full"
    scenarios = SCENARIOS
    if args.only:
        scenarios = [s.strip() for s in args.only.split(",") if s.strip()]
        bad = [s for s in scenarios if s not in SCENARIO_FNS]
        if bad:
            ap.error(f"unknown scenario(s) {bad}; choose from {SCENARIOS}")
    binary = Path(args.binary)
    if not binary.is_file():
        print(f"flight-node binary not found at {binary}", file=sys.stderr)
        return 2

    if args.out:
        out_dir = Path(args.out)
    elif profile == "smoke" or args.only:
        out_dir = Path(tempfile.mkdtemp(prefix="flight-bench-results-"))
    else:
        out_dir = BENCH_DIR / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="flight-bench-work-"))

    def on_signal(signum, _frame):
        _kill_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    log(f"profile {profile}; scenarios {','.join(scenarios)}; load average {load_start}; "
        f"scratch {work}")
    p = dict(PROFILES[profile])
    if args.reps:
        p["reps"] = args.reps
    if args.big_mb:
        p["big_mb"] = p["cold_mb"] = args.big_mb
    ctx = Ctx(profile=profile, p=p, binary=binary, work=work)
    errors: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        for name in scenarios:
            t0 = time.perf_counter()
            log(f"{name} …")
            try:
                SCENARIO_FNS[name](ctx)
                shown = {k: round(v, 3) for k, v in ctx.sections[name]["ratios"].items()}
                log(f"{name} done in {time.perf_counter() - t0:.1f} s: {shown}")
            except Exception:
                errors[name] = traceback.format_exc()
                log(f"{name} FAILED after {time.perf_counter() - t0:.1f} s:\n{errors[name]}")
    finally:
        _kill_all()
    elapsed = time.perf_counter() - t_start

    date = dt.date.today().isoformat()
    meta = {"date": date, "profile": profile, "scenarios": scenarios, "elapsed_s": elapsed,
            "load_start": load_start,
            "load_end": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
            "machine": machine_info(binary)}
    results = {k: ctx.results.get(k) for k in REQUIRED_KEYS}
    results.update({k: v for k, v in ctx.results.items() if k not in results})
    results["meta"] = {k: v for k, v in meta.items() if k != "scenarios"} | {
        "scenarios": scenarios, "failed": sorted(errors)}
    results["details"] = ctx.sections

    png = out_dir / f"{date}.png"
    have_png = write_plot(ctx.results, png)
    write_report(ctx, meta, errors, out_dir / f"{date}.md", png.name if have_png else None)
    text = json.dumps(results, indent=2, default=float) + "\n"
    (out_dir / "latest.json").write_text(text)
    if args.json:
        Path(args.json).write_text(text)

    print()
    print(f"{'key':<28} {'value':>10}  target")
    for k in SUMMARY_RATIOS + ["rss_ratio", "doget_extra_rss_mib"] + SUMMARY_MS:
        v = ctx.results.get(k)
        tgt, mark = target_mark(k, v)
        print(f"{k:<28} {fmt(v, 3):>10}  {tgt} {mark}")
    print(f"\nresults: {out_dir}/{date}.md, latest.json" + (f", {png.name}" if have_png else "")
          + f"; wall time {elapsed:.1f} s")
    if args.keep_work or errors:
        print(f"scratch directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if errors:
        print(f"FAILED scenarios: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
