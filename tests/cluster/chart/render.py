"""Renders charts/flight-operator offline with Helm's Go SDK (helm-python-sdk) and prints
every manifest as one multi-document YAML stream (NOTES.txt left out).

    python render.py [--name RELEASE] [--namespace NS] [--values JSON]

The cluster tests apply what this prints to a real kube-apiserver.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import helm_python

CHART_DIR = Path(__file__).resolve().parents[3] / "charts" / "flight-operator"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", default="flight-operator")
    parser.add_argument("--namespace", default="flight-system")
    parser.add_argument("--values", default="{}", help="values as a JSON object")
    parser.add_argument("--chart", default=str(CHART_DIR))
    args = parser.parse_args()
    chart = helm_python.Chart.load(args.chart)
    manifests = chart.render(
        values=json.loads(args.values), name=args.name, namespace=args.namespace
    )
    out = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        text = manifests[path].strip()
        if text:
            out.append(f"# Source: {path}\n{text}\n")
    sys.stdout.write("---\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
