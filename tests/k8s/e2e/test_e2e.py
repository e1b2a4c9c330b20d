"""End to end on the one-node cluster of `tests/k8s/cluster`, the way a user meets the product:
the chart installed with the dev MinIO (images built from this checkout), the operator and a
pool's node pods Running and Ready through their real probes under the chart's security
context, a table uploaded and read back with pyarrow through the pool's Service, the upload
discovered as an ArrowDataset whose columns `kubectl get` fills, a node pod deleted and
recreated while the ticket stays readable (from MinIO), and the operator restarted without
losing anything.

`make test-e2e` builds the images, brings the cluster up, imports the images, runs this and
tears the cluster down. Needs KUBECONFIG (the cluster's admin kubeconfig) and IMAGES_ENV
(target/images/images.env)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "charts" / "flight-operator"
RELEASE = "flight-operator"
OPERATOR_NS = "flight-system"
MINIO_NS = "minio"
POOL = "flight"
MINIO_USER, MINIO_PASSWORD = "minioadmin", "minioadmin"
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "240"))
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition"}


def kubectl(*args: str, input: str | None = None, check: bool = True) -> str:
    out = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                         timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def wait_for(what: str, probe, timeout: float = TIMEOUT, every: float = 2.0):
    """Polls `probe` until it returns something truthy; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
            if last:
                return last
        except (AssertionError, subprocess.SubprocessError, OSError, flight.FlightError) as e:
            last = e
        time.sleep(every)
    diagnostics = kubectl("get", "pods,deployments,statefulsets,flightpools,arrowdatasets", "-A",
                          "-o", "wide", check=False)
    events = kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{diagnostics}\n"
                         f"{events[-4000:]}")


def images() -> dict[str, str]:
    path = Path(os.environ.get("IMAGES_ENV", ROOT / "target" / "images" / "images.env"))
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def split(ref: str) -> tuple[str, str]:
    repo, _, tag = ref.rpartition(":")
    return repo, tag


@pytest.fixture(scope="module")
def installed():
    """The chart, rendered with the Helm SDK and applied server-side, as `helm install` would."""
    import helm_python

    imgs = images()
    op_repo, op_tag = split(imgs["FLIGHT_OPERATOR_IMAGE"])
    node_repo, node_tag = split(imgs["FLIGHT_NODE_IMAGE"])
    minio_repo, minio_tag = split(imgs["MINIO_IMAGE"])
    values = {
        "image": {"repository": op_repo, "tag": op_tag, "pullPolicy": "Never"},
        "nodeImage": {"repository": node_repo, "tag": node_tag},
        "logFormat": "text",
        "discoveryInterval": "5s",
        "retryAfter": "5s",
        "minio": {"enabled": True, "namespace": MINIO_NS, "rootUser": MINIO_USER,
                  "rootPassword": MINIO_PASSWORD,
                  "image": {"repository": minio_repo, "tag": minio_tag, "pullPolicy": "Never"}},
        "pool": {"replicas": 1, "imagePullPolicy": "Never"},
    }
    for ns in (OPERATOR_NS, MINIO_NS):
        kubectl("create", "namespace", ns, check=False)
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    rendered = helm_python.Chart.load(str(CHART)).render(values=values, name=RELEASE,
                                                        namespace=OPERATOR_NS)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            # The bucket Job runs the MinIO client image (`mc`), which cannot be pulled here;
            # the bucket is made from the host below, as the Job would.
            if doc.get("kind") == "Job" and "bucket" in doc["metadata"]["name"]:
                continue
            # Helm puts namespaced objects without a namespace into the release's.
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"].setdefault("namespace", OPERATOR_NS)
            docs.append(doc)
    # The FlightPool needs the bucket; apply it last.
    pools = [d for d in docs if d["kind"] == "FlightPool"]
    rest = [d for d in docs if d["kind"] != "FlightPool"]
    kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-",
            input=yaml.safe_dump_all(rest))
    wait_for("the operator Deployment to be available", lambda: kubectl(
        "-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}", "--timeout=5s"))
    wait_for("MinIO to be available", lambda: kubectl(
        "-n", MINIO_NS, "rollout", "status", "deployment/minio", "--timeout=5s"))
    make_bucket()
    kubectl("apply", "--server-side", "--field-manager=helm", "-f", "-",
            input=yaml.safe_dump_all(pools))
    return values


def service_ip(ns: str, name: str) -> str:
    return kubectl("-n", ns, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}")


def make_bucket():
    """The dev MinIO's bucket (what the chart's bucket Job makes), through its ClusterIP."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://{service_ip(MINIO_NS, 'minio')}:9000",
                      aws_access_key_id=MINIO_USER, aws_secret_access_key=MINIO_PASSWORD,
                      region_name="us-east-1")

    def create():
        try:
            s3.create_bucket(Bucket="datasets")
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
        return True
    wait_for("the MinIO bucket", create)
    return s3


def pool_ready() -> bool:
    pool = json.loads(kubectl("-n", OPERATOR_NS, "get", "flightpool", POOL, "-o", "json"))
    conditions = {c["type"]: c["status"] for c in pool.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def node_pods() -> list[dict]:
    pods = json.loads(kubectl("-n", OPERATOR_NS, "get", "pods", "-l",
                              f"app.kubernetes.io/instance={POOL}", "-o", "json"))["items"]
    return pods


def all_ready(pods: list[dict]) -> bool:
    return bool(pods) and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        for p in pods)


def client() -> flight.FlightClient:
    return flight.connect(f"grpc://{service_ip(OPERATOR_NS, POOL)}:8815")


def test_the_pool_runs_under_the_charts_security_context(installed):
    wait_for("FlightPool flight to be Ready", pool_ready)
    pods = wait_for("the pool's node pods to be Ready", lambda: all_ready(node_pods()) and node_pods())
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"].get("runAsNonRoot") is True, spec["securityContext"]
        for c in spec["containers"]:
            assert c["securityContext"].get("readOnlyRootFilesystem") is True, c["name"]
            assert c.get("readinessProbe") and c.get("livenessProbe"), c["name"]
    operator = json.loads(kubectl("-n", OPERATOR_NS, "get", "pods", "-l",
                                  "app.kubernetes.io/name=flight-operator", "-o", "json"))["items"]
    assert all_ready(operator), operator


def test_an_atom_uploads_and_another_reads_through_the_service(installed):
    wait_for("FlightPool flight to be Ready", pool_ready)
    table = pa.table({"id": pa.array(range(50_000), pa.int64()),
                      "city": pa.array([f"c{i % 17}" for i in range(50_000)]),
                      "amount": pa.array([i * 0.25 for i in range(50_000)])})
    c = wait_for("the pool's Service to answer", lambda: client().list_actions() and client())
    options = flight.FlightCallOptions(headers=[(b"x-flight-ttl", b"1h")])
    writer, reader = c.do_put(flight.FlightDescriptor.for_path(OPERATOR_NS, "e2e-sales"),
                              table.schema, options=options)
    writer.write_table(table, max_chunksize=10_000)
    writer.done_writing()
    put = json.loads(reader.read().to_pybytes())
    writer.close()
    ticket = put["ticket"]
    # Another connection, as the next atom would.
    assert client().do_get(flight.Ticket(ticket)).read_all().equals(table)

    # The upload is discovered as an ArrowDataset, and `kubectl get` fills its columns.
    def listed():
        out = kubectl("-n", OPERATOR_NS, "get", "arrowdatasets", "e2e-sales", check=False)
        lines = out.splitlines()
        return len(lines) == 2 and "Ready" in lines[1] and "50000" in lines[1] and lines
    lines = wait_for("the upload to show as a Ready ArrowDataset", listed)
    header = lines[0].split()
    for column in ("POOL", "PHASE", "ROWS", "SIZE", "TIER", "EXPIRES", "AGE"):
        assert column in header, header

    # A node pod deleted while the ticket is in use: the StatefulSet recreates it and the
    # ticket is served again, from MinIO.
    before = {p["metadata"]["uid"] for p in node_pods()}
    kubectl("-n", OPERATOR_NS, "delete", "pod", f"{POOL}-0", "--wait=false")
    wait_for("the node pod to be recreated and Ready",
             lambda: all_ready(node_pods()) and not before & {p["metadata"]["uid"]
                                                               for p in node_pods()})
    got = wait_for("the ticket to be served again",
                   lambda: client().do_get(flight.Ticket(ticket)).read_all())
    assert got.equals(table)

    # The operator restarted while the pool runs: nothing is lost.
    kubectl("-n", OPERATOR_NS, "rollout", "restart", f"deployment/{RELEASE}")
    kubectl("-n", OPERATOR_NS, "rollout", "status", f"deployment/{RELEASE}",
            f"--timeout={int(TIMEOUT)}s")
    wait_for("the dataset to stay Ready after the operator restart", listed)
    assert client().do_get(flight.Ticket(ticket)).read_all().equals(table)


def pod_stats(ip: str) -> dict:
    """The `stats` action of one node pod, asked directly at its IP."""
    result = flight.connect(f"grpc://{ip}:8815").do_action(flight.Action("stats", b""))
    return json.loads(next(iter(result)).body.to_pybytes())


def pod_uri(pod: dict, listed: list[str]) -> str:
    """The peers-file URI of a node pod (`grpc://<pod>.<pool>-headless.<ns>.svc:8815`)."""
    name = pod["metadata"]["name"]
    [uri] = [u for u in listed if u.startswith(f"grpc://{name}.")]
    return uri


def test_a_three_node_pool_is_one_memory_and_scales_in_without_loss(installed):
    wait_for("FlightPool flight to be Ready", pool_ready)
    # Three nodes and 1 MiB parts, so that one version spreads over the pool.
    kubectl("-n", OPERATOR_NS, "patch", "flightpool", POOL, "--type=merge",
            "-p", json.dumps({"spec": {"replicas": 3, "partSize": "1MiB"}}))
    wait_for("three Ready node pods", lambda: len(node_pods()) == 3 and all_ready(node_pods()),
             timeout=TIMEOUT * 2)

    def peers():
        text = kubectl("-n", OPERATOR_NS, "get", "configmap", f"{POOL}-config",
                       "-o", "jsonpath={.data.peers\\.yaml}")
        listed = yaml.safe_load(text).get("peers", [])
        return len(listed) == 3 and listed
    listed = wait_for("the peers file to list the three nodes", peers)
    assert all(f".{POOL}-headless.{OPERATOR_NS}.svc" in uri for uri in listed), listed
    wait_for("FlightPool flight to report 3 ready replicas", lambda: json.loads(kubectl(
        "-n", OPERATOR_NS, "get", "flightpool", POOL, "-o", "json")
    ).get("status", {}).get("readyReplicas") == 3)
    # Every node has read the peers file (the kubelet syncs ConfigMap volumes within a
    # minute) before anything is placed.
    for pod in node_pods():
        ip = pod["status"]["podIP"]
        wait_for(f"{pod['metadata']['name']} to see the three peers",
                 lambda: sorted(pod_stats(ip).get("peers", [])) == sorted(listed),
                 timeout=TIMEOUT)

    def cache():
        status = json.loads(kubectl("-n", OPERATOR_NS, "get", "flightpool", POOL, "-o", "json"))
        c = status.get("status", {}).get("cache") or {}
        return c.get("nodes") == 3 and c
    fill = wait_for("the pool to report the cache fill of the three nodes", cache)
    assert fill["capacityBytes"] > 0 and fill["percentage"].endswith("%"), fill

    # An 8 MB table: several 1 MiB parts, each placed on its own owner.
    table = pa.table({"x": pa.array(range(1_000_000), pa.int64())})
    writer, reader = client().do_put(flight.FlightDescriptor.for_path(OPERATOR_NS, "e2e-wide"),
                                     table.schema)
    writer.write_table(table, max_chunksize=131_072)
    writer.done_writing()
    ticket = json.loads(reader.read().to_pybytes())["ticket"]
    writer.close()
    info = client().get_flight_info(flight.FlightDescriptor.for_path(OPERATOR_NS, "e2e-wide"))
    owners = [e.locations[0].uri.decode() for e in info.endpoints]
    parts = len(owners)
    assert parts >= 4, owners
    assert set(owners) <= set(listed), (owners, listed)
    assert len(set(owners)) >= 2, f"{parts} parts all placed on one node: {owners}"

    # preload (on the discovered resource) warms every owner; status says all parts are hot.
    wait_for("the upload to be discovered", lambda: kubectl(
        "-n", OPERATOR_NS, "get", "arrowdataset", "e2e-wide", check=False))
    kubectl("-n", OPERATOR_NS, "patch", "arrowdataset", "e2e-wide", "--type=merge",
            "-p", json.dumps({"spec": {"preload": True}}))

    def hot():
        ds = json.loads(kubectl("-n", OPERATOR_NS, "get", "arrowdataset", "e2e-wide", "-o", "json"))
        st = ds.get("status", {})
        return st.get("hot") == f"{parts}/{parts}" and st.get("tier") == "Memory" and st
    wait_for("the dataset to be hot on every owner", hot)
    for pod in node_pods():
        uri = pod_uri(pod, listed)
        held = [t["parts"] for t in pod_stats(pod["status"]["podIP"])["tables"]
                if (t["namespace"], t["name"]) == (OPERATOR_NS, "e2e-wide")]
        mine = [p for p, owner in enumerate(owners) if owner == uri]
        assert (held[0] if held else []) == mine, (pod["metadata"]["name"], held, mine)

    # Every node serves the whole version (its own parts from memory, the rest from MinIO).
    for pod in node_pods():
        ip = pod["status"]["podIP"]
        got = flight.connect(f"grpc://{ip}:8815").do_get(flight.Ticket(ticket)).read_all()
        assert got.equals(table), pod["metadata"]["name"]

    # Scaling in, with `kubectl scale` (the /scale subresource), loses nothing: the node that
    # stays serves every part, including those the others held (from MinIO).
    kubectl("-n", OPERATOR_NS, "scale", "flightpool", POOL, "--replicas=1")
    wait_for("one Ready node pod", lambda: len(node_pods()) == 1 and all_ready(node_pods()),
             timeout=TIMEOUT * 2)
    wait_for("FlightPool flight to report 1 ready replica", lambda: json.loads(kubectl(
        "-n", OPERATOR_NS, "get", "flightpool", POOL, "-o", "json")
    ).get("status", {}).get("readyReplicas") == 1)
    ip = node_pods()[0]["status"]["podIP"]
    got = flight.connect(f"grpc://{ip}:8815").do_get(flight.Ticket(ticket)).read_all()
    assert got.equals(table)


def test_ttl_expiry_removes_the_resource_and_the_objects(installed):
    wait_for("FlightPool flight to be Ready", pool_ready)
    table = pa.table({"x": pa.array(range(100), pa.int64())})
    options = flight.FlightCallOptions(headers=[(b"x-flight-ttl", b"20s")])
    writer, reader = client().do_put(flight.FlightDescriptor.for_path(OPERATOR_NS, "e2e-short"),
                                     table.schema, options=options)
    writer.write_table(table)
    writer.done_writing()
    ticket = json.loads(reader.read().to_pybytes())["ticket"]
    writer.close()
    wait_for("the short-lived upload to be discovered", lambda: kubectl(
        "-n", OPERATOR_NS, "get", "arrowdataset", "e2e-short", check=False))

    def gone():
        out = subprocess.run(["kubectl", "-n", OPERATOR_NS, "get", "arrowdataset", "e2e-short"],
                             capture_output=True, text=True, timeout=60)
        return out.returncode != 0 and "NotFound" in out.stderr
    wait_for("the expired dataset's resource to be deleted", gone, timeout=TIMEOUT + 20)
    s3 = make_bucket()
    listed = s3.list_objects_v2(Bucket="datasets", Prefix=f"flight/{OPERATOR_NS}/e2e-short/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys and all(k.endswith(".manifest.json") for k in keys), keys
    for k in keys:
        record = json.loads(s3.get_object(Bucket="datasets", Key=k)["Body"].read())
        assert record["format"] == "arrow.trinity.io/tombstone-v1", record
    with pytest.raises(pa.ArrowKeyError, match="not found|expired|deleted"):
        client().do_get(flight.Ticket(ticket)).read_all()


def run_atom(name: str, *args: str) -> str:
    """Runs the atom image (tests/k8s/atom) as a Job in the pool's namespace, under the
    restricted security context, and returns its log; fails with the log if the Job fails."""
    image = images()["ATOM_IMAGE"]
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": OPERATOR_NS},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "atom", "image": image, "imagePullPolicy": "Never", "args": list(args),
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        }}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(job))

    def finished():
        status = json.loads(kubectl("-n", OPERATOR_NS, "get", "job", name, "-o", "json"))["status"]
        return status.get("succeeded") or status.get("failed")
    wait_for(f"Job {name} to finish", finished)
    log = kubectl("-n", OPERATOR_NS, "logs", f"job/{name}")
    status = json.loads(kubectl("-n", OPERATOR_NS, "get", "job", name, "-o", "json"))["status"]
    assert status.get("succeeded") == 1, f"Job {name} failed: {log}"
    return log


def test_atoms_in_pods_pass_a_table_by_ticket_through_the_service_name(installed):
    wait_for("FlightPool flight to be Ready", pool_ready)
    uri = f"grpc://{POOL}.{OPERATOR_NS}.svc:8815"
    put = json.loads(run_atom("atom-put", "put", uri, OPERATOR_NS, "e2e-atoms", "200000")
                     .strip().splitlines()[-1])
    assert put["rows"] == 200_000 and put["ticket"].startswith(f"ads1:{OPERATOR_NS}/e2e-atoms@")
    log = run_atom("atom-get", "get", uri, put["ticket"], "200000")
    assert log.startswith(f"ok: {put['ticket']} has 200000 rows"), log
    # And from the host, with pyarrow through the ClusterIP.
    got = client().do_get(flight.Ticket(put["ticket"])).read_all()
    assert got.column("x").to_pylist() == list(range(200_000))
