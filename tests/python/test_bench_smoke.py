"""The benchmark harness end to end at its smoke size: every scenario runs against the built
binary and reports its figures. Measurements are not checked against targets here (this
machine is shared and small tables measure latency, not throughput): only that each figure
was measured and the contenders returned the expected data, which the harness checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import REPO_ROOT, node_binary

KEYS = ["atom_read_vs_pyarrow", "projection_2_of_12_vs_full", "preview_p50_ms",
        "cold_vs_pyarrow_parquet", "doget_vs_pyarrow", "flight_vs_json", "rss_ratio"]


def test_bench_smoke_measures_every_figure(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "bench.py"), "--smoke",
         "--binary", str(node_binary()), "--json", str(out), "--out", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["meta"]["failed"] == []
    for k in KEYS:
        v = results.get(k)
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (k, v)
    assert results["details"]["cold"]["title"].endswith("(MinIO)"), results["details"]["cold"]["title"]
