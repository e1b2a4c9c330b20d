"""values.schema.json refuses wrong values; `helm lint` is clean; the chart's CRDs are the
generated ones, byte for byte."""

from __future__ import annotations

import json

import helm_python
import pytest

from chartlib import CHART_DIR, MODES, NAMESPACE, RELEASE, ROOT


@pytest.mark.parametrize(
    "values, where",
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"minio": {"enabled": "yes"}}, "/minio/enabled"),
        ({"namespaced": {"enabled": 1}}, "/namespaced/enabled"),
        ({"namespaced": {"enabled": True, "namespace": "Not_A_Namespace"}}, "/namespaced/namespace"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"discoveryInterval": "soon"}, "/discoveryInterval"),
        ({"discoveryInterval": 30}, "/discoveryInterval"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"metrics": {"port": 80}}, "/metrics/port"),
        ({"metrics": {"port": "8080"}}, "/metrics/port"),
        ({"extraArgs": "--x"}, "/extraArgs"),
        ({"resources": {"limit": {"memory": "1Gi"}}}, "/resources"),
        ({"pool": {"defaultTtl": "1 day"}}, "/pool/defaultTtl"),
        ({"pool": {"replicas": "3"}}, "/pool/replicas"),
        ({"pool": {"memoryLimit": "lots"}}, "/pool/memoryLimit"),
        ({"pool": {"storage": {"url": "http://bucket"}}}, "/pool/storage/url"),
        ({"minio": {"rootPassword": "short"}}, "/minio/rootPassword"),
        ({"minio": {"bucket": "A"}}, "/minio/bucket"),
        ({"leaderElection": {"leaseDuration": 1}}, "/leaderElection/leaseDuration"),
        ({"unknownKey": True}, "unknownKey"),
        ({"serviceMonitor": {"enable": True}}, "enable"),
    ],
)
def test_schema_refuses(chart, values, where):
    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    assert where in str(err.value)


def test_schema_accepts_the_defaults_and_documented_modes(chart):
    for values in MODES.values():
        chart.validate_schema(values)
    chart.validate_schema(
        {
            "image": {"digest": "sha256:" + "0" * 64},
            "discoveryInterval": "1m30s",
            "pool": {"defaultTtl": "7d", "memoryLimit": "1.5GiB", "storage": {"url": "s3://b/p"}},
        }
    )


def test_every_default_value_is_described_by_the_schema():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    values = helm_python.Chart.load(CHART_DIR).values

    def walk(value, node, path):
        assert node is not None, f"{path} is not in values.schema.json"
        if isinstance(value, dict) and node.get("additionalProperties") is False:
            for key, sub in value.items():
                walk(sub, node["properties"].get(key), f"{path}.{key}")

    walk(values, schema, "values")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lint_clean(mode):
    report = helm_python.lint(
        CHART_DIR, values=MODES[mode], strict=True, namespace=NAMESPACE, kube_version="v1.32.0"
    )
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); 2 is a warning, 3 an error.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_chart_metadata(chart):
    meta = chart.metadata
    assert meta["name"] == "flight-operator"
    assert meta["apiVersion"] == "v2"
    workspace = (ROOT / "Cargo.toml").read_text()
    # appVersion follows the workspace version, which tags the images.
    assert f'version = "{meta["appVersion"]}"' in workspace


def test_chart_crds_are_the_generated_crds():
    top = ROOT / "crds"
    shipped = CHART_DIR / "crds"
    top_files = sorted(p.name for p in top.glob("*.yaml"))
    assert top_files, "no CRDs in crds/"
    assert sorted(p.name for p in shipped.iterdir()) == top_files, (
        "charts/flight-operator/crds/ must hold exactly the files of crds/"
    )
    for name in top_files:
        assert (shipped / name).read_bytes() == (top / name).read_bytes(), (
            f"charts/flight-operator/crds/{name} differs from crds/{name}; "
            "copy crds/*.yaml into the chart after regenerating them"
        )


def test_chart_loads_its_crds(chart):
    names = sorted(c["name"] for c in chart.crds)
    assert names == ["crds/arrowdatasets.arrow.trinity.io.yaml", "crds/flightpools.arrow.trinity.io.yaml"]
