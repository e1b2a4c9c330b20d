"""Shared helpers of the chart tests: render charts/flight-operator offline with Helm's Go SDK
(helm-python-sdk) and parse the manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import helm_python
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "flight-operator"
RELEASE = "flight-operator"
NAMESPACE = "flight-system"

# Values of the three install modes the tests cover.
DEFAULT_VALUES: Dict[str, Any] = {}
MINIO_VALUES: Dict[str, Any] = {"minio": {"enabled": True}}
NAMESPACED_VALUES: Dict[str, Any] = {"namespaced": {"enabled": True, "namespace": "analytics"}}
MODES = {
    "default": DEFAULT_VALUES,
    "minio": MINIO_VALUES,
    "namespaced": NAMESPACED_VALUES,
}


class Rendered:
    """The parsed output of one render: objects with the template they came from, and NOTES."""

    def __init__(self, manifests: Dict[str, str]) -> None:
        self.manifests = manifests
        self.objects: List[Dict[str, Any]] = []
        self.sources: List[str] = []
        self.notes = ""
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                self.notes = text
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)
                    self.sources.append(path)

    def of_kind(self, kind: str) -> List[Dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: Optional[str] = None) -> Dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def kinds(self) -> List[str]:
        return sorted(o["kind"] for o in self.objects)


def operator_container(rendered: Rendered) -> Dict[str, Any]:
    deployment = rendered.one("Deployment", "flight-operator")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]
