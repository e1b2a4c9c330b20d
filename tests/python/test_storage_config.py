"""Storage set up as S3 users expect: the standard AWS environment works without flags, and a
misconfigured node exits at start with one sentence naming the fix (real MinIO, real binary)."""

from __future__ import annotations

import os
import subprocess

import pyarrow as pa

from conftest import free_port, get_table, node_binary, put_table


def run_briefly(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Starts the node and expects it to exit on its own (a failed start)."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("FLIGHT_", "AWS_", "MINIO_"))}
    full.update(env)
    return subprocess.run(
        [str(node_binary()), "--listen", f"127.0.0.1:{free_port()}",
         "--http-listen", f"127.0.0.1:{free_port()}", *args],
        env=full, capture_output=True, text=True, timeout=60)


def test_the_standard_aws_environment_is_enough(node, minio) -> None:
    env = {
        "AWS_ENDPOINT_URL": minio.endpoint,
        "AWS_ALLOW_HTTP": "true",
        **minio.env,
    }
    n = node(storage_url=minio.storage_url, env=env)
    c = n.client()
    table = pa.table({"a": list(range(100))})
    res = put_table(c, ["aws-env"], table)
    assert get_table(c, res["ticket"]).equals(table)
    # AWS_ENDPOINT (the older name) works too.
    env = {"AWS_ENDPOINT": minio.endpoint, "AWS_ALLOW_HTTP": "true", **minio.env}
    n = node(storage_url=minio.storage_url, env=env)
    assert get_table(n.client(), res["ticket"]).equals(table)


def test_misconfigurations_exit_at_start_naming_the_fix(minio) -> None:
    base = {"AWS_ENDPOINT_URL": minio.endpoint, **minio.env}
    cases = [
        # Plain HTTP without allowing it: the classic "builder error".
        ({**base}, [], "pass --allow-http or set AWS_ALLOW_HTTP=true"),
        ({**base, "AWS_ALLOW_HTTP": "true"},
         ["--storage-url", f"s3://no-such-bucket-{minio.prefix[-12:]}/x"],
         "the bucket does not exist"),
        ({**base, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "nobody"}, [],
         "does not know the access key id"),
        ({**base, "AWS_ALLOW_HTTP": "true", "AWS_SECRET_ACCESS_KEY": "wrong-secret"}, [],
         "secret access key does not match"),
        ({**base, "AWS_ALLOW_HTTP": "true", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
         [], "cannot connect to the storage endpoint"),
    ]
    for env, args, expected in cases:
        args = args or ["--storage-url", minio.storage_url]
        out = run_briefly(args, env)
        assert out.returncode != 0, (env, out.stderr)
        assert expected in out.stderr, (expected, out.stderr)
        assert "builder error" not in out.stderr, out.stderr
    # --storage-check=off starts anyway (and says why later, on /readyz and per request).
    env = {**base}
    proc = subprocess.Popen(
        [str(node_binary()), "--listen", f"127.0.0.1:{free_port()}",
         "--http-listen", f"127.0.0.1:{free_port()}", "--storage-url", minio.storage_url,
         "--storage-check", "off"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith(("FLIGHT_", "AWS_"))},
             **env},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            proc.wait(timeout=2)
            raise AssertionError("the node exited although --storage-check=off")
        except subprocess.TimeoutExpired:
            pass
    finally:
        proc.terminate()
        proc.wait(10)
