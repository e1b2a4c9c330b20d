"""Every rendered manifest, validated offline against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors). FlightPools are validated against
the openAPIV3Schema of the chart's own CRD with jsonschema. ServiceMonitor is the one kind
checked by hand only: its CRD belongs to the Prometheus Operator and no schema for it is
available offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import jsonschema
import kubernetes_validate
import pytest
import yaml

from chartlib import CHART_DIR, MODES

# The oldest Kubernetes the chart targets in these checks, and the newest schemas bundled.
KUBE_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]

EVERYTHING: Dict[str, Any] = {
    "minio": {"enabled": True, "persistence": {"enabled": True}},
    "serviceMonitor": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"podSelector": {"matchLabels": {"app": "prometheus"}}}],
        "egress": {"enabled": True, "apiServerCidrs": ["10.0.0.1/32"], "extraRules": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443, "protocol": "TCP"}]}]},
    },
    "pool": {"contracts": {"sales": {"fields": [{"name": "id", "type": "int64", "nullable": False}]}}},
    "extraEnv": [{"name": "A", "value": "b"}],
    "tolerations": [{"key": "k", "operator": "Exists"}],
}
SCENARIOS = dict(MODES, everything=EVERYTHING)


def crd_schemas() -> Dict[str, Dict[str, Any]]:
    out = {}
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        crd = yaml.safe_load(Path(path).read_text())
        group = crd["spec"]["group"]
        for version in crd["spec"]["versions"]:
            api_version = f"{group}/{version['name']}"
            out[f"{api_version}/{crd['spec']['names']['kind']}"] = version["schema"]["openAPIV3Schema"]
    return out


CRD_SCHEMAS = crd_schemas()


def structural_to_jsonschema(schema: Dict[str, Any]) -> Dict[str, Any]:
    """An OpenAPI v3 structural schema as JSON Schema: `nullable: true` becomes a type that
    also allows null. x-kubernetes-* extensions are ignored by jsonschema as unknown keywords."""
    out = dict(schema)
    if out.pop("nullable", False) is True and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {k: structural_to_jsonschema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = structural_to_jsonschema(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [structural_to_jsonschema(v) for v in out[key]]
    return out


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_manifests_validate(render, scenario, kube_version):
    r = render(SCENARIOS[scenario])
    checked = 0
    for obj, source in zip(r.objects, r.sources):
        key = f"{obj['apiVersion']}/{obj['kind']}"
        if key in CRD_SCHEMAS:
            schema = structural_to_jsonschema(CRD_SCHEMAS[key])
            # The CRD schema covers spec/status; apiVersion, kind and metadata are the API
            # server's. Unknown spec fields would be pruned silently, so refuse them here.
            jsonschema.validate(obj, schema)
            assert set(obj["spec"]) <= set(schema["properties"]["spec"]["properties"]), source
            checked += 1
            continue
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            # No schema offline (Prometheus Operator CRD); checked in test_operator.py.
            assert obj["kind"] == "ServiceMonitor"
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{source}: {obj['kind']} {obj['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked == len(r.objects) - len(r.of_kind("ServiceMonitor"))


def test_the_validator_catches_mistakes():
    """The check above can fail: a typo and a wrong type are both reported."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "i", "securityContex": {}}]},
            },
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSIONS[0], strict=True)
    pool_schema = structural_to_jsonschema(CRD_SCHEMAS["arrow.trinity.io/v1alpha1/FlightPool"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"apiVersion": "arrow.trinity.io/v1alpha1", "kind": "FlightPool", "metadata": {"name": "p"},
             "spec": {"replicas": "two", "storage": {"url": "s3://b/p"}}},
            pool_schema,
        )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {"apiVersion": "arrow.trinity.io/v1alpha1", "kind": "FlightPool", "metadata": {"name": "p"},
             "spec": {"storage": {"url": "s3://b/p"}, "defaultTtl": "forever"}},
            pool_schema,
        )
