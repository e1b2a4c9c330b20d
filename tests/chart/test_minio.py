"""The dev MinIO and the FlightPool the chart creates."""

from __future__ import annotations

from chartlib import MINIO_VALUES, NAMESPACE


def test_dev_minio_objects(render):
    r = render(MINIO_VALUES)
    secret = r.one("Secret", "minio")
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    deployment = r.one("Deployment", "minio")
    pod = deployment["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"].startswith("minio/minio:RELEASE.")
    env = {e["name"]: e for e in c["env"]}
    assert env["MINIO_ROOT_USER"]["valueFrom"]["secretKeyRef"] == {
        "name": "minio",
        "key": "AWS_ACCESS_KEY_ID",
    }
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
    assert c["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/data", "/tmp"} <= mounts  # writable dirs under a read-only root
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["data"]
    service = r.one("Service", "minio")
    assert service["spec"]["ports"][0]["port"] == 9000


def test_bucket_job(render):
    r = render(MINIO_VALUES)
    job = r.one("Job", "minio-bucket")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    assert job["spec"]["activeDeadlineSeconds"] > 0  # the wait for MinIO is bounded
    assert job["spec"]["backoffLimit"] >= 1
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("minio/mc:RELEASE.")
    assert "mc mb --ignore-existing" in c["args"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["BUCKET"]["value"] == "datasets"
    assert env["MINIO_ENDPOINT"]["value"] == "http://minio:9000"
    assert env["MC_CONFIG_DIR"]["value"].startswith("/tmp")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_default_pool_wired_to_minio(render):
    r = render(MINIO_VALUES)
    pool = r.one("FlightPool", "flight")
    assert pool["apiVersion"] == "arrow.trinity.io/v1alpha1"
    assert pool["metadata"]["namespace"] == NAMESPACE
    spec = pool["spec"]
    assert spec["replicas"] == 2
    assert spec["defaultTtl"] == "24h"
    assert spec["memoryLimit"] == "256MiB"
    assert spec["storage"] == {
        "url": "s3://datasets/flight",
        "endpoint": f"http://minio.{NAMESPACE}.svc:9000",
        "region": "us-east-1",
        "allowHttp": True,
        "credentialsSecret": {"name": "flight-storage"},
    }
    creds = r.one("Secret", "flight-storage")
    assert creds["metadata"]["namespace"] == NAMESPACE
    # The keys the FlightPool's credentialsSecret reads by default.
    assert creds["stringData"] == {
        "AWS_ACCESS_KEY_ID": "minioadmin",
        "AWS_SECRET_ACCESS_KEY": "minioadmin",
    }
    # Not the image: the operator's --node-image applies.
    assert "image" not in spec


def test_minio_and_pool_in_other_namespaces(render):
    # What the kind e2e installs: MinIO where examples/flightpool-minio.yaml expects it.
    r = render(
        {
            "minio": {"enabled": True, "namespace": "minio", "bucket": "data", "prefix": "p/q"},
            "pool": {"namespace": "analytics", "name": "main", "replicas": 1},
        }
    )
    for kind, name in (("Deployment", "minio"), ("Service", "minio"), ("Secret", "minio"), ("Job", "minio-bucket")):
        assert r.one(kind, name)["metadata"]["namespace"] == "minio"
    pool = r.one("FlightPool", "main")
    assert pool["metadata"]["namespace"] == "analytics"
    assert pool["spec"]["storage"]["endpoint"] == "http://minio.minio.svc:9000"
    assert pool["spec"]["storage"]["url"] == "s3://data/p/q"
    assert r.one("Secret", "main-storage")["metadata"]["namespace"] == "analytics"
    assert "grpc://main.analytics.svc:8815" in r.notes


def test_pool_create_false(render):
    r = render({"minio": {"enabled": True}, "pool": {"create": False}})
    assert not r.of_kind("FlightPool")
    assert not [s for s in r.of_kind("Secret") if s["metadata"]["name"].endswith("-storage")]
    assert r.one("Deployment", "minio")


def test_pool_on_own_storage(render):
    r = render(
        {
            "pool": {
                "storage": {
                    "url": "s3://bucket/prefix",
                    "region": "eu-west-1",
                    "credentialsSecret": "s3-creds",
                },
                "image": "registry.example/node:1",
                "contracts": {"sales": {"fields": [{"name": "id", "type": "int64", "nullable": False}]}},
            }
        }
    )
    assert not r.of_kind("Job") and not r.of_kind("Secret")
    spec = r.one("FlightPool", "flight")["spec"]
    assert spec["storage"] == {
        "url": "s3://bucket/prefix",
        "region": "eu-west-1",
        "allowHttp": False,
        "credentialsSecret": {"name": "s3-creds"},
    }
    assert spec["image"] == "registry.example/node:1"
    assert spec["contracts"]["sales"]["fields"][0] == {"name": "id", "type": "int64", "nullable": False}


def test_minio_persistence(render):
    r = render({"minio": {"enabled": True, "persistence": {"enabled": True, "size": "5Gi", "storageClass": "standard"}}})
    pvc = r.one("PersistentVolumeClaim", "minio-data")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert pvc["spec"]["storageClassName"] == "standard"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in r.one("Deployment", "minio")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "minio-data"
    assert "emptyDir" not in r.notes.split("WARNING")[1].split("\n")[0]


def test_minio_credentials_roll_the_pod(render):
    a = render({"minio": {"enabled": True}})
    b = render({"minio": {"enabled": True, "rootPassword": "another-secret"}})
    key = "checksum/credentials"

    def checksum(r):
        return r.one("Deployment", "minio")["spec"]["template"]["metadata"]["annotations"][key]

    assert checksum(a) != checksum(b)
    # stringData: the values stay readable in the chart, never hand-encoded.
    assert "data" not in b.one("Secret", "minio")
