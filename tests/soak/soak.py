"""Soak: slow and hostile clients by the hundreds against one flight-node, while normal
traffic runs. Loopback only, bounded in time.

Scenarios (each on a fresh node with `--memory-limit` LIMIT):

* `cold-readers`: DoGets of a version larger than the cache whose clients read one batch
  and stop.
* `exports`: HTTP CSV exports of a cached table whose clients never read the body.
* `csv-uploads`: HTTP CSV uploads that send headers and a few bytes, then nothing.
* `idle-connections`: TCP connections to the gRPC port that send nothing.

Normal traffic (upload + read of a small table, in a loop) runs during each scenario and
once alone (the unloaded run). The report gives, per scenario: peak RSS of the node ÷
`--memory-limit`, against the target `peak ≤ 1.25 × limit + 64 MB`; p50/p99 of normal
requests ÷ the unloaded run's; errors of normal requests; connections the server closed;
the node's refusals and stalled streams from `stats`. Exits non-zero when the node crashed,
normal requests failed, or memory went past the target. Timing ratios are reported, not
checked (machines are noisy).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

REPO = Path(__file__).resolve().parents[2]
MB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TOKENS = "tokens:\n  - {token: normal, namespaces: [default]}\n" \
         "  - {token: hostile, namespaces: [default]}\n  - {token: admin, namespaces: ['*']}\n"


def opts(token: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


class Node:
    def __init__(self, binary: str, work: Path, limit_mb: int, extra: list[str]):
        self.grpc, self.http = free_port(), free_port()
        tokens = work / "tokens.yaml"
        tokens.write_text(TOKENS)
        self.limit = limit_mb * MB
        self.log = open(work / f"node-{self.grpc}.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.grpc}", "--http-listen",
             f"127.0.0.1:{self.http}", "--storage-url", f"file://{work}/data-{self.grpc}",
             "--memory-limit", f"{limit_mb}MiB", "--part-size", "16MiB",
             "--token-file", str(tokens), *extra],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.peak = 0
        self._stop = threading.Event()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.grpc), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        self.client = flight.connect(f"grpc://127.0.0.1:{self.grpc}")
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def rss(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def stats(self) -> dict:
        r = list(self.client.do_action(flight.Action("stats", b""), opts("admin")))
        return json.loads(r[0].body.to_pybytes())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        self._stop.set()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def table(mb: int, seed: int = 0) -> pa.Table:
    rows = mb * MB // 16
    rng = np.random.default_rng(seed)
    return pa.table({"a": rng.integers(0, 1 << 40, rows), "b": rng.random(rows)})


def upload(client, name: str, t: pa.Table, token: str = "normal") -> bytes:
    w, r = client.do_put(flight.FlightDescriptor.for_path(name), t.schema, opts(token))
    w.write_table(t, max_chunksize=64 * 1024)
    w.done_writing()
    meta = r.read()
    w.close()
    return json.loads(meta.to_pybytes())["ticket"].encode()


class Traffic(threading.Thread):
    """Normal requests: upload a small table and read it back, in a loop."""

    def __init__(self, node: Node, seconds: float):
        super().__init__(daemon=True)
        self.node, self.seconds = node, seconds
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self):
        client = flight.connect(f"grpc://127.0.0.1:{self.node.grpc}")
        small = table(1, seed=7)
        end = time.time() + self.seconds
        i = 0
        while time.time() < end and not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                ticket = upload(client, f"normal-{i % 4}", small)
                got = client.do_get(flight.Ticket(ticket), opts("normal")).read_all()
                assert got.num_rows == small.num_rows
                self.latencies.append(time.perf_counter() - t0)
                # Not timed: keeps storage from filling with thousands of versions.
                version = int(ticket.decode().rsplit("@", 1)[1])
                body = json.dumps({"name": f"normal-{i % 4}", "version": version}).encode()
                list(client.do_action(flight.Action("delete", body), opts("normal")))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                self.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                time.sleep(0.05)
            i += 1

    def quantiles(self) -> tuple[float, float]:
        if len(self.latencies) < 2:
            return float("nan"), float("nan")
        q = statistics.quantiles(self.latencies, n=100)
        return q[49], q[98]


def fill_cache(node: Node) -> None:
    """Uploads tables until the cache (three quarters of --memory-limit) is full, as on a
    node in use; the slow clients come on top of that."""
    for i in range(int(node.limit * 0.75) // (16 * MB) + 1):
        upload(node.client, f"resident-{i}", table(16, seed=100 + i))


def stalled_cold_readers(node: Node, n: int, big_mb: int, holders: list):
    ticket = upload(node.client, "big", table(big_mb, seed=1), "hostile")
    node.client.do_action(flight.Action("evict", json.dumps({"name": "big"}).encode()),
                          opts("hostile"))
    node.peak = 0  # the stalled readers' phase (the upload above is not a slow client)
    outcomes = {"opened": 0, "refused": 0}

    def one():
        try:
            c = flight.connect(f"grpc://127.0.0.1:{node.grpc}")
            r = c.do_get(flight.Ticket(ticket), opts("hostile"))
            r.read_chunk()
            holders.append((c, r))  # never read again
            outcomes["opened"] += 1
        except pa.ArrowException as e:  # RESOURCE_EXHAUSTED comes as ArrowInvalid
            key = "refused" if "resource exhausted" in str(e) else f"failed: {str(e)[:80]}"
            outcomes[key] = outcomes.get(key, 0) + 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return outcomes


def raw_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    return s


def stalled_exports(node: Node, n: int, holders: list):
    upload(node.client, "export-me", table(48, seed=2), "hostile")
    for _ in range(n):
        s = raw_socket(node.http)
        s.sendall(b"GET /v1/datasets/default/export-me?format=csv HTTP/1.1\r\n"
                  b"Host: x\r\nAuthorization: Bearer hostile\r\n\r\n")
        holders.append(s)
    return {"opened": n}


def slow_csv_uploads(node: Node, n: int, holders: list):
    statuses: dict[str, int] = {}
    for i in range(n):
        s = raw_socket(node.http)
        s.sendall(f"POST /v1/datasets/default/slow-{i} HTTP/1.1\r\nHost: x\r\n"
                  "Authorization: Bearer hostile\r\nContent-Type: text/csv\r\n"
                  "Content-Length: 100000000\r\n\r\na,b\n1,2\n"
                  .encode())
        holders.append(s)
    time.sleep(1)
    for s in holders:
        s.setblocking(False)
        try:
            head = s.recv(64)
            status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed"
        except BlockingIOError:
            status = "held"
        except OSError:
            status = "closed"
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def idle_connections(node: Node, n: int, holders: list):
    for _ in range(n):
        holders.append(socket.create_connection(("127.0.0.1", node.grpc)))
    return {"opened": n}


def closed_by_server(socks: list) -> int:
    closed = 0
    for s in socks:
        if not isinstance(s, socket.socket):
            continue
        s.setblocking(False)
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    closed += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    return closed


SCENARIOS = {
    "cold-readers": stalled_cold_readers,
    "exports": stalled_exports,
    "csv-uploads": slow_csv_uploads,
    "idle-connections": idle_connections,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true",
                   help="a few clients per scenario and short timeouts: checks the harness "
                        "and the memory bound (CI)")
    p.add_argument("--only", default=",".join(SCENARIOS))
    p.add_argument("--limit-mb", type=int, default=256)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    binary = os.environ.get("FLIGHT_NODE_BIN", str(REPO / "target/release/flight-node"))
    short = args.short
    counts = {"cold-readers": 8 if short else 48, "exports": 4 if short else 16,
              "csv-uploads": 40 if short else 600, "idle-connections": 50 if short else 800}
    seconds = 6 if short else 30
    stall_s = 4 if short else 20
    stall = f"{stall_s}s"
    extra = ["--stream-stall-timeout", stall, "--idle-connection-timeout", stall,
             "--upload-idle-timeout", "30s" if short else "60s", "--budget-wait", "2s"]
    big_mb = int(args.limit_mb * 1.5)
    work = Path(tempfile.mkdtemp(prefix="flight-soak-"))
    # Uploads of every scenario land here; removed at exit, failed or not.
    atexit.register(shutil.rmtree, work, True)
    results = {}
    failed = False

    node = Node(binary, work, args.limit_mb, extra)
    base = Traffic(node, seconds / 2)
    base.run()
    node.stop()
    b50, b99 = base.quantiles()
    print(f"unloaded: p50 {b50 * 1e3:.1f} ms, p99 {b99 * 1e3:.1f} ms, "
          f"{len(base.latencies)} requests, {len(base.errors)} errors")

    for name in args.only.split(","):
        node = Node(binary, work, args.limit_mb, extra)
        holders: list = []
        fill_cache(node)
        traffic = Traffic(node, 3600)
        traffic.start()
        if name == "cold-readers":
            outcome = stalled_cold_readers(node, counts[name], big_mb, holders)
        else:
            outcome = SCENARIOS[name](node, counts[name], holders)
        # The slow clients stay past the stall and idle timeouts while traffic goes on.
        time.sleep(max(seconds, stall_s + 3))
        traffic.stop.set()
        traffic.join()
        stats = node.stats() if node.alive() else {}
        closed = closed_by_server(holders)
        alive = node.alive()
        node.stop()
        p50, p99 = traffic.quantiles()
        bound = 1.25 * node.limit + 64 * MB
        r = {
            "clients": counts[name], "outcome": outcome, "alive": alive,
            "peak_rss_mb": round(node.peak / MB, 1),
            "peak_rss_over_limit": round(node.peak / node.limit, 2),
            "within_memory_target": node.peak <= bound,
            "p50_ratio": round(p50 / b50, 2), "p99_ratio": round(p99 / b99, 2),
            "normal_requests": len(traffic.latencies), "normal_errors": len(traffic.errors),
            "closed_by_server": closed,
            "refused_memory": stats.get("refusedMemory"),
            "refused_uploads": stats.get("refusedUploads"),
            "stalled_streams": stats.get("stalledStreams"),
        }
        results[name] = r
        ok = alive and r["within_memory_target"] and not traffic.errors
        failed |= not ok
        print(f"{name:17} {'ok ' if ok else 'BAD'} peak {r['peak_rss_mb']} MB "
              f"({r['peak_rss_over_limit']}x limit, target <= {bound / MB:.0f} MB), "
              f"p50 x{r['p50_ratio']} p99 x{r['p99_ratio']}, "
              f"{r['normal_requests']} normal requests, {r['normal_errors']} errors, "
              f"closed by server {closed}/{len(holders)}, outcome {outcome}, "
              f"refused memory {r['refused_memory']} uploads {r['refused_uploads']}, "
              f"stalled {r['stalled_streams']}")
        for e in traffic.errors[:3]:
            print(f"    normal request failed: {e}")
        for h in holders:
            try:
                h.close()
            except Exception:  # noqa: BLE001
                pass
    if args.json:
        args.json.write_text(json.dumps({"limit_mb": args.limit_mb, "short": short,
                                         "unloaded_ms": [b50 * 1e3, b99 * 1e3],
                                         "scenarios": results}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
