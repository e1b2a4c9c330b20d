#!/usr/bin/env python3
"""Writes flight.json, the Grafana dashboard the chart ships (`grafanaDashboard.enabled`).

The dashboard is generated, not edited by hand: change the panels here and run
`python3 charts/flight-operator/dashboards/generate.py`. tests/chart checks that the
checked-in JSON is this script's output and that every metric it queries is one the node or
the operator exports.
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).with_name("flight.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(PromQL, legend)], width)
ROWS = [
    ("Traffic", [
        ("Bytes sent (DoGet)", "Bps",
         [("sum(rate(flight_sent_bytes_total[5m]))", "sent")], 8),
        ("Bytes uploaded", "Bps",
         [("sum(rate(flight_upload_bytes_total[5m]))", "uploaded")], 8),
        ("Requests by method", "reqps",
         [("sum by (method) (rate(flight_requests_total[5m]))", "{{method}}")], 8),
    ]),
    ("Errors and latency", [
        ("Errors by code", "reqps",
         [('sum by (code) (rate(flight_requests_total{code!="Ok"}[5m]))', "{{code}}")], 8),
        ("Upload latency (p50, p95)", "s",
         [("histogram_quantile(0.5, sum by (le) (rate(flight_upload_seconds_bucket[5m])))", "p50"),
          ("histogram_quantile(0.95, sum by (le) (rate(flight_upload_seconds_bucket[5m])))", "p95")], 8),
        ("Loads from storage (p95) by result", "s",
         [("histogram_quantile(0.95, sum by (le) (rate(flight_storage_load_seconds_bucket[5m])))", "p95"),
          ("sum by (result) (rate(flight_storage_loads_total[5m]))", "{{result}} per s")], 8),
    ]),
    ("Memory", [
        ("Cache fill", "percentunit",
         [("sum(flight_cache_bytes) / sum(flight_cache_limit_bytes)", "cache"),
          ("sum(flight_request_memory_bytes) / sum(flight_request_memory_limit_bytes)", "request memory")], 8),
        ("Cache hit rate", "percentunit",
         [("sum(rate(flight_cache_hits_total[5m])) / "
           "(sum(rate(flight_cache_hits_total[5m])) + sum(rate(flight_cache_misses_total[5m])))", "hits")], 8),
        ("Evictions and refusals", "ops",
         [("sum(rate(flight_cache_evictions_total[5m]))", "evictions"),
          ("sum(rate(flight_refused_request_memory_total[5m]))", "refused: request memory"),
          ("sum(rate(flight_refused_uploads_total[5m]))", "refused: upload slots"),
          ("sum(rate(flight_stalled_streams_total[5m]))", "stalled streams ended")], 8),
    ]),
    ("Datasets", [
        ("Datasets by phase", "short",
         [("sum by (phase) (flight_operator_datasets)", "{{phase}}")], 8),
        ("Expiring within the hour", "short",
         [("sum(flight_operator_datasets_expiring_soon)", "expiring")], 8),
        ("Pending consumers and releases", "short",
         [("sum(flight_operator_pending_consumers)", "pending consumers"),
          ("sum(rate(flight_release_deletes_total[5m])) * 300", "deleted by release per 5m"),
          ("sum(rate(flight_operator_gc_deletions_total[5m])) * 300", "deleted by TTL per 5m")], 8),
    ]),
]


def dashboard() -> dict:
    panels = []
    y = 0
    pid = 1
    for row_title, row in ROWS:
        panels.append({"type": "row", "title": row_title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        x = 0
        for title, unit, queries, width in row:
            panels.append({
                "type": "timeseries",
                "title": title,
                "id": pid,
                "datasource": DATASOURCE,
                "gridPos": {"h": 8, "w": width, "x": x, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr,
                     "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)
                ],
            })
            pid += 1
            x += width
        y += 8
    return {
        "title": "Arrow Flight pools",
        "uid": "flight-pools",
        "description": "flight-node and flight-operator metrics: traffic, errors, latency, "
                       "memory, datasets.",
        "tags": ["arrow", "flight"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [{
            "name": "datasource", "label": "Data source", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0,
        }]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
