"""The operator Deployment, its Service, ServiceMonitor and NetworkPolicy, labels and NOTES."""

from __future__ import annotations

import pytest

from chartlib import MODES, NAMESPACE, RELEASE, operator_container

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
)


def args_of(container):
    return dict(a.lstrip("-").split("=", 1) for a in container["args"])


def test_default_objects(render):
    r = render()
    assert r.kinds() == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
    )
    # Without storage no pool is created, and no dev MinIO.
    assert not r.of_kind("FlightPool")
    assert not r.of_kind("Job")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_restricted_pod_security(render, mode):
    r = render(MODES[mode])
    for deployment in r.of_kind("Deployment") + [j for j in r.of_kind("Job")]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["securityContext"]["runAsUser"] > 0
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, c["name"]
            assert "privileged" not in sc
            assert c["resources"]["limits"]["memory"], c["name"]
            assert c["resources"]["requests"], c["name"]
        assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_deployment_probes_and_ports(render):
    r = render()
    c = operator_container(r)
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["timeoutSeconds"] >= 1 and probe["periodSeconds"] >= 1
    assert c["resources"] == {
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    }


def test_default_args_and_env(render):
    r = render()
    c = operator_container(r)
    assert c["image"] == "ghcr.io/trinity-data/flight-operator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    args = args_of(c)
    assert args == {
        "metrics-addr": "0.0.0.0:8080",
        # The operator's own default (DEFAULT_NODE_IMAGE in controller/pool/build.rs) and the chart agree.
        "node-image": "ghcr.io/trinity-data/flight-node:0.1.0",
        "leader-election": "true",
        "lease-name": "flight-operator",
        "lease-duration": "15",
        "discovery-interval": "30s",
        "retry-after": "30s",
        "log-format": "json",
    }
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "RUST_LOG" not in env
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "flight-operator"
    assert pod["automountServiceAccountToken"] is True
    assert r.one("ServiceAccount")["automountServiceAccountToken"] is False


def test_values_wired_into_the_deployment(render):
    r = render(
        {
            "image": {"repository": "registry.example/op", "tag": "dev", "pullPolicy": "Never"},
            "nodeImage": {"repository": "registry.example/node", "digest": "sha256:" + "a" * 64},
            "replicaCount": 2,
            "logFormat": "text",
            "logLevel": "debug,kube=info",
            "discoveryInterval": "5s",
            "retryAfter": "1m",
            "leaderElection": {"leaseName": "my-lease", "leaseDuration": 30},
            "metrics": {"port": 9090},
            "extraArgs": ["--something=1"],
            "extraEnv": [{"name": "EXTRA", "value": "1"}],
            "resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "podAnnotations": {"a": "b"},
        }
    )
    d = r.one("Deployment")
    assert d["spec"]["replicas"] == 2
    c = operator_container(r)
    assert c["image"] == "registry.example/op:dev"
    assert c["imagePullPolicy"] == "Never"
    args = args_of(c)
    assert args["node-image"] == "registry.example/node@sha256:" + "a" * 64
    assert args["log-format"] == "text"
    assert args["discovery-interval"] == "5s"
    assert args["retry-after"] == "1m"
    assert args["lease-name"] == "my-lease"
    assert args["lease-duration"] == "30"
    assert args["metrics-addr"] == "0.0.0.0:9090"
    assert args["something"] == "1"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RUST_LOG"] == "debug,kube=info"
    assert env["EXTRA"] == "1"
    assert c["ports"][0]["containerPort"] == 9090
    # Helm merges maps: the default memory request stays.
    assert c["resources"] == {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1", "memory": "64Mi"}}
    pod = d["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["metadata"]["annotations"] == {"a": "b"}
    lease_role = r.one("Role", "flight-operator-leader-election")
    assert lease_role["rules"][1]["resourceNames"] == ["my-lease"]


def test_tag_defaults_to_app_version_and_digest_wins(render, chart):
    app_version = chart.metadata["appVersion"]
    c = operator_container(render({"image": {"repository": "r/op", "digest": "sha256:" + "b" * 64}}))
    assert c["image"] == "r/op@sha256:" + "b" * 64
    c = operator_container(render({"image": {"repository": "r/op"}}))
    assert c["image"] == f"r/op:{app_version}"


def test_leader_election_off(render):
    r = render({"leaderElection": {"enabled": False}})
    args = args_of(operator_container(r))
    assert args["leader-election"] == "false"
    assert "lease-name" not in args
    assert not [o for o in r.of_kind("Role") if o["metadata"]["name"].endswith("leader-election")]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_labels(render, mode):
    r = render(MODES[mode])
    for obj in r.objects:
        labels = obj["metadata"].get("labels", {})
        for key in STANDARD_LABELS:
            assert key in labels, f"{obj['kind']} {obj['metadata']['name']} lacks {key}"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        # Namespaced objects are placed explicitly.
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"], obj["kind"]
    for workload in r.of_kind("Deployment") + r.of_kind("Job"):
        template_labels = workload["spec"]["template"]["metadata"]["labels"]
        for key in STANDARD_LABELS:
            assert key in template_labels
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        assert selector.items() <= template_labels.items()
    # Flight node pods are the operator's (app.kubernetes.io/name=flight-node); nothing the
    # chart renders may look like one.
    for obj in r.objects:
        assert obj["metadata"]["labels"]["app.kubernetes.io/name"] != "flight-node"


def test_services_select_their_pods(render):
    r = render({"minio": {"enabled": True}})
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in r.of_kind("Deployment")
    }
    metrics = r.one("Service", "flight-operator-metrics")
    assert metrics["spec"]["selector"].items() <= pods["flight-operator"].items()
    assert metrics["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    minio = r.one("Service", "minio")
    assert minio["spec"]["selector"].items() <= pods["minio"].items()
    # The metrics Service must not select MinIO or the bucket Job, and vice versa.
    assert not metrics["spec"]["selector"].items() <= pods["minio"].items()
    assert not minio["spec"]["selector"].items() <= pods["flight-operator"].items()


def test_metrics_service_can_be_disabled(render):
    r = render({"metrics": {"service": {"enabled": False}}})
    assert not r.of_kind("Service")


def test_service_monitor(render):
    assert not render().of_kind("ServiceMonitor")
    r = render({"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"}})
    sm = r.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [
        {"port": "metrics", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    service_labels = r.one("Service", "flight-operator-metrics")["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= service_labels.items()


def test_network_policy(render):
    assert not render().of_kind("NetworkPolicy")
    r = render({"networkPolicy": {"enabled": True}})
    np = r.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    assert np["spec"]["ingress"] == [{"ports": [{"port": "metrics", "protocol": "TCP"}]}]
    pod_labels = r.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert np["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()

    prom = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    r = render(
        {
            "minio": {"enabled": True},
            "networkPolicy": {
                "enabled": True,
                "metricsFrom": prom,
                "egress": {"enabled": True, "apiServerCidrs": ["10.96.0.1/32"]},
            },
        }
    )
    np = r.one("NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert np["spec"]["ingress"][0]["from"] == prom
    egress = np["spec"]["egress"]
    ports = [p["port"] for rule in egress for p in rule.get("ports", [])]
    assert 53 in ports and 443 in ports and 8815 in ports and 9000 in ports
    api_rule = next(rule for rule in egress if any(p["port"] == 443 for p in rule["ports"]))
    assert api_rule["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]


def test_replicas_without_leader_election_are_refused(chart):
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="leaderElection"):
        chart.render(
            values={"replicaCount": 2, "leaderElection": {"enabled": False}},
            name=RELEASE,
            namespace=NAMESPACE,
        )


def test_service_monitor_needs_the_metrics_service(chart):
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match="metrics.service.enabled"):
        chart.render(
            values={"serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            name=RELEASE,
            namespace=NAMESPACE,
        )


def test_notes(render):
    notes = render().notes
    assert "rollout status deployment/flight-operator" in notes
    assert "kubectl apply -f examples/flightpool-minio.yaml" not in notes  # one apply line
    assert "examples/flightpool-minio.yaml" in notes
    assert "kubectl get arrowdatasets -A" in notes
    assert "all namespaces" in notes
    assert "dev MinIO" not in notes

    notes = render({"minio": {"enabled": True}}).notes
    assert 'FlightPool "flight"' in notes
    assert "grpc://flight.flight-system.svc:8815" in notes
    assert "wait flightpool/flight --for=condition=Ready" in notes
    assert "dev MinIO" in notes and "emptyDir" in notes

    notes = render({"namespaced": {"enabled": True, "namespace": "analytics"}}).notes
    assert "watches namespace analytics only" in notes
    assert "create pools in namespace analytics only" in notes
