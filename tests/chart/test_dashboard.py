"""The Grafana dashboard: generated, shipped by the chart when enabled, and querying only
metrics that the node and the operator export."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight

from chartlib import CHART_DIR, ROOT

DASHBOARDS = CHART_DIR / "dashboards"


def generator():
    spec = importlib.util.spec_from_file_location("generate", DASHBOARDS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def queried_metrics() -> set:
    board = json.loads((DASHBOARDS / "flight.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    names = set()
    for e in exprs:
        names.update(re.findall(r"\b(flight_[a-z_]+)\b", e))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_the_checked_in_dashboard_is_the_generators_output() -> None:
    assert (DASHBOARDS / "flight.json").read_text() == generator().render(), (
        "flight.json is out of date: run python3 charts/flight-operator/dashboards/generate.py")


def test_the_chart_ships_it_only_when_enabled(render) -> None:
    assert not [o for o in render().of_kind("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    r = render({"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}})
    cm = [o for o in r.of_kind("ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    assert len(cm) == 1
    assert cm[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm[0]["metadata"]["namespace"] == "monitoring"
    board = json.loads(cm[0]["data"]["flight-pools.json"])
    assert board == json.loads((DASHBOARDS / "flight.json").read_text())


def node_metric_names() -> set:
    """Sample names on a real node's /metrics after an upload, a read and a load."""
    binary = os.environ.get("FLIGHT_NODE_BIN", str(ROOT / "target" / "debug" / "flight-node"))
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{ports[0]}", "--http-listen", f"127.0.0.1:{ports[1]}",
             "--storage-url", f"file://{data}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/healthz", timeout=1)
                    break
                except OSError:
                    assert time.time() < deadline, "the node did not start"
                    time.sleep(0.1)
            c = flight.connect(f"grpc://127.0.0.1:{ports[0]}")
            table = pa.table({"a": list(range(10))})
            w, r = c.do_put(flight.FlightDescriptor.for_path("m"), table.schema)
            w.write_table(table)
            w.done_writing()
            ticket = json.loads(r.read().to_pybytes())["ticket"]
            w.close()
            list(c.do_action(flight.Action("evict", json.dumps({"name": "m"}).encode())))
            c.do_get(flight.Ticket(ticket)).read_all()  # a load from storage
            text = urllib.request.urlopen(f"http://127.0.0.1:{ports[1]}/metrics", timeout=5).read()
        finally:
            proc.terminate()
            proc.wait(10)
    names = set()
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def operator_metric_names() -> set:
    """Names the operator registers (counters get `_total` in the exposition)."""
    src = (ROOT / "operator" / "src" / "metrics.rs").read_text()
    names = set()
    for name in re.findall(r'registry\.register\(\s*"([a-z_]+)"', src):
        names.update({f"flight_operator_{name}", f"flight_operator_{name}_total"})
    assert "flight_operator_datasets" in names, names
    return names


def test_every_queried_metric_is_exported() -> None:
    known = node_metric_names() | operator_metric_names()
    missing = sorted(queried_metrics() - known)
    assert not missing, f"the dashboard queries metrics nothing exports: {missing}"
