"""RBAC: exactly the verbs the operator's code uses, no wildcards, ClusterRole or Role."""

from __future__ import annotations

import pytest

from chartlib import MODES, NAMESPACE

# What the operator calls, by (API group, resource); see the comment in templates/_helpers.tpl.
EXPECTED = {
    ("arrow.trinity.io", "arrowdatasets"): {"list", "watch", "create", "patch", "delete"},
    ("arrow.trinity.io", "arrowdatasets/status"): {"patch"},
    ("arrow.trinity.io", "flightpools"): {"get", "list", "watch"},
    ("arrow.trinity.io", "flightpools/status"): {"patch"},
    ("arrow.trinity.io", "flightpools/finalizers"): {"update"},
    ("apps", "statefulsets"): {"list", "watch", "create", "patch"},
    ("", "services"): {"list", "watch", "create", "patch"},
    ("", "configmaps"): {"list", "watch", "create", "patch"},
    ("policy", "poddisruptionbudgets"): {"list", "watch", "create", "patch"},
    ("", "secrets"): {"get"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def flatten(rules):
    out = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in out, f"{key} granted twice"
                out[key] = set(rule["verbs"])
    return out


@pytest.mark.parametrize("mode", sorted(MODES))
def test_no_wildcards(render, mode):
    r = render(MODES[mode])
    roles = r.of_kind("ClusterRole") + r.of_kind("Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                for item in rule.get(field, []):
                    assert "*" not in item, f"{role['metadata']['name']}: {field} {item}"
            # Secrets are read-only and never listed (a list returns every Secret's data).
            if "secrets" in rule["resources"]:
                assert rule["verbs"] == ["get"]


def test_cluster_mode_rules(render):
    r = render()
    role = r.one("ClusterRole", "flight-operator")
    assert flatten(role["rules"]) == EXPECTED
    binding = r.one("ClusterRoleBinding", "flight-operator")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "flight-operator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "flight-operator", "namespace": NAMESPACE}
    ]
    args = operator_args(r)
    assert not any(a.startswith("--namespace") for a in args)


def operator_args(r):
    return r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    "namespaced, watched",
    [({"enabled": True}, NAMESPACE), ({"enabled": True, "namespace": "analytics"}, "analytics")],
)
def test_namespaced_mode(render, namespaced, watched):
    r = render({"namespaced": namespaced})
    assert not r.of_kind("ClusterRole") and not r.of_kind("ClusterRoleBinding")
    role = r.one("Role", "flight-operator")
    assert role["metadata"]["namespace"] == watched
    assert flatten(role["rules"]) == EXPECTED
    binding = r.one("RoleBinding", "flight-operator")
    assert binding["metadata"]["namespace"] == watched
    assert binding["roleRef"]["kind"] == "Role"
    # The ServiceAccount stays in the release namespace.
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "flight-operator", "namespace": NAMESPACE}
    ]
    assert f"--namespace={watched}" in operator_args(r)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_lease_role_in_release_namespace(render, mode):
    r = render(MODES[mode])
    role = r.one("Role", "flight-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["flight-operator"],
            "verbs": ["get", "patch"],
        },
    ]
    binding = r.one("RoleBinding", "flight-operator-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == "flight-operator-leader-election"


def test_rbac_and_service_account_can_be_left_out(render):
    r = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "ops"}})
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert not r.of_kind(kind), kind
    assert r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_bindings_name_the_rendered_service_account(render):
    r = render({"serviceAccount": {"name": "flight-sa"}})
    assert r.one("ServiceAccount")["metadata"]["name"] == "flight-sa"
    for binding in r.of_kind("ClusterRoleBinding") + r.of_kind("RoleBinding"):
        assert binding["subjects"][0]["name"] == "flight-sa"
    assert r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "flight-sa"
