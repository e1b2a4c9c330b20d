"""The image tarballs tests/images/build writes (target/images, or $IMAGES_DIR).

* Structure: `docker save` format (manifest.json, config named by its digest, one
  <digest>/layer.tar per diff ID), names the chart runs by default, config like the
  Dockerfiles' (user, entrypoint, working directory, ports).
* Contents: each binary's ELF interpreter and every shared library it needs are in the image,
  and the binary runs with the image's own loader and libraries; CA bundle, users, /tmp.
* containerd (when its binaries are installed; it runs as root): a private containerd imports
  every tarball with `ctr -n k8s.io images import` and runs them the way the chart's pods do,
  as their non-root users with a read-only root file system: flight-node serves /healthz,
  MinIO serves /minio/health/live, flight-operator prints --help.

Run after tests/images/build:  tests/images/build && .venv/bin/python -m pytest -q tests/images
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(os.environ.get("IMAGES_DIR", ROOT / "target" / "images"))
CHART = ROOT / "charts" / "flight-operator"
IMAGES = ["flight-node", "flight-operator", "minio"]
NONROOT = 65532

# What each image runs, as the Dockerfiles (flight-node, flight-operator) and the chart's
# MinIO Deployment expect it.
EXPECTED = {
    "flight-node": {
        "binary": "usr/local/bin/flight-node",
        "dockerfile": ROOT / "flight-node" / "Dockerfile",
        "run": ["--help"],
    },
    "flight-operator": {
        "binary": "usr/local/bin/flight-operator",
        "dockerfile": ROOT / "operator" / "Dockerfile",
        "run": ["--help"],
    },
    "minio": {
        "binary": "usr/bin/minio",
        "dockerfile": None,
        "run": ["--version"],
        "config": {
            "User": "1000:1000",
            "Entrypoint": ["/usr/bin/minio"],
            "ExposedPorts": {"9000/tcp": {}},
        },
    },
}


def _env_file() -> Dict[str, str]:
    path = IMAGES_DIR / "images.env"
    assert path.exists(), f"{path} is missing: run tests/images/build first"
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _key(image: str) -> str:
    return image.upper().replace("-", "_")


class Image:
    def __init__(self, image: str, path: Path) -> None:
        self.image = image
        self.path = path
        with tarfile.open(path) as tar:
            self.members = {m.name.rstrip("/"): m for m in tar.getmembers()}
            self.manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            self.config_name = self.manifest[0]["Config"]
            self.config_bytes = tar.extractfile(self.config_name).read()  # type: ignore[union-attr]
        self.config = json.loads(self.config_bytes)

    def layers(self) -> Iterator[tarfile.TarFile]:
        with tarfile.open(self.path) as outer:
            for name in self.manifest[0]["Layers"]:
                data = outer.extractfile(name).read()  # type: ignore[union-attr]
                with tarfile.open(fileobj=io.BytesIO(data)) as layer:
                    yield layer

    def entries(self) -> Dict[str, tarfile.TarInfo]:
        out: Dict[str, tarfile.TarInfo] = {}
        for layer in self.layers():
            out.update({m.name.rstrip("/"): m for m in layer.getmembers()})
        return out

    def read(self, path: str) -> bytes:
        found: Optional[bytes] = None
        for layer in self.layers():
            try:
                found = layer.extractfile(path).read()  # type: ignore[union-attr]
            except KeyError:
                pass
        assert found is not None, f"{self.image}: no {path}"
        return found


@pytest.fixture(scope="module")
def env() -> Dict[str, str]:
    return _env_file()


@pytest.fixture(scope="module")
def images(env: Dict[str, str]) -> Dict[str, Image]:
    out = {}
    for image in IMAGES:
        path = Path(env.get(f"{_key(image)}_TAR", IMAGES_DIR / f"{image}.tar"))
        assert path.exists(), f"{path} is missing: run tests/images/build"
        out[image] = Image(image, path)
    return out


@pytest.fixture(scope="module")
def rootfs(images: Dict[str, Image]) -> Iterator[Dict[str, Path]]:
    """Each image's layers unpacked in order (no whiteouts: the layers only add); removed
    afterwards (hundreds of MB)."""
    with tempfile.TemporaryDirectory(prefix="flight-rootfs-") as tmp:
        out = {}
        for name, image in images.items():
            root = Path(tmp) / name
            for layer in image.layers():
                layer.extractall(root, filter="fully_trusted")
            out[name] = root
        yield out


def _chart_defaults() -> Dict[str, str]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    version = str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])
    return {
        "flight-node": f"{values['nodeImage']['repository']}:{version}",
        "flight-operator": f"{values['image']['repository']}:{version}",
        "minio": f"{values['minio']['image']['repository']}:{values['minio']['image']['tag']}",
    }


def _dockerfile_final_stage(path: Path) -> Dict[str, object]:
    """USER, ENTRYPOINT, WORKDIR and EXPOSE of a Dockerfile's last stage."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stage = text.split("\nFROM ")[-1]
    out: Dict[str, object] = {"ExposedPorts": {}}
    for line in stage.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "USER":
            out["User"] = rest.strip()
        elif word == "ENTRYPOINT":
            out["Entrypoint"] = json.loads(rest)
        elif word == "WORKDIR":
            out["WorkingDir"] = rest.strip()
        elif word == "EXPOSE":
            out["ExposedPorts"] = {f"{p}/tcp": {} for p in rest.split()}
    return out


# --- structure -------------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGES)
def test_archive_is_docker_save_format(name: str, images: Dict[str, Image], env: Dict[str, str]) -> None:
    image = images[name]
    assert len(image.manifest) == 1
    entry = image.manifest[0]
    assert entry["RepoTags"] == [env[f"{_key(name)}_IMAGE"]]
    # The config is named by its own digest; each layer file by its diff ID.
    assert image.config_name == hashlib.sha256(image.config_bytes).hexdigest() + ".json"
    diff_ids = []
    with tarfile.open(image.path) as outer:
        for layer_name in entry["Layers"]:
            digest = hashlib.sha256()
            f = outer.extractfile(layer_name)
            assert f is not None, f"{layer_name} missing"
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
            diff_ids.append("sha256:" + digest.hexdigest())
            assert layer_name == digest.hexdigest() + "/layer.tar"
    assert image.config["rootfs"] == {"type": "layers", "diff_ids": diff_ids}
    assert len(image.config["history"]) == len(diff_ids)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    assert (image.config["os"], image.config["architecture"]) == ("linux", arch)
    expected_files = {"manifest.json", "repositories", image.config_name}
    for layer_name in entry["Layers"]:
        expected_files |= {layer_name, layer_name.split("/")[0], layer_name.split("/")[0] + "/VERSION"}
    assert set(image.members) == expected_files


def test_names_are_the_chart_defaults(env: Dict[str, str]) -> None:
    """What the chart (and the operator's DEFAULT_NODE_IMAGE) runs unless told otherwise;
    the names tests/images/build was given through the environment otherwise."""
    defaults = _chart_defaults()
    config_rs = (ROOT / "operator" / "src" / "controller" / "pool" / "build.rs").read_text()
    assert f'DEFAULT_NODE_IMAGE: &str = "{defaults["flight-node"]}"' in config_rs
    for name in IMAGES:
        expected = os.environ.get(f"{_key(name)}_IMAGE", defaults[name])
        assert env[f"{_key(name)}_IMAGE"] == expected


def test_the_rust_images_share_the_base_layer(images: Dict[str, Image]) -> None:
    bases = {images[n].config["rootfs"]["diff_ids"][0] for n in IMAGES}
    assert len(bases) == 1


@pytest.mark.parametrize("name", IMAGES)
def test_config_is_what_the_dockerfile_or_chart_runs(name: str, images: Dict[str, Image]) -> None:
    config = images[name].config["config"]
    spec = EXPECTED[name]
    expected = _dockerfile_final_stage(spec["dockerfile"]) if spec["dockerfile"] else spec["config"]
    for key, value in expected.items():  # type: ignore[union-attr]
        assert config.get(key) == value, f"{name}: config {key} is {config.get(key)!r}, not {value!r}"
    assert "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" in config["Env"]


# --- contents --------------------------------------------------------------------------


def _in_root(root: Path, path: str) -> Path:
    """path inside root with symlinks resolved inside root (absolute links included)."""
    current = Path("/")
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        candidate = current / part
        real = root / candidate.relative_to("/")
        if real.is_symlink():
            hops += 1
            assert hops < 40, f"symlink loop at {candidate}"
            target = os.readlink(real)
            parts = [p for p in target.split("/") if p] + parts
            current = Path("/") if target.startswith("/") else current
        elif part == "..":
            current = current.parent
        else:
            current = candidate
    return root / current.relative_to("/")


def _elf(binary: Path) -> Dict[str, object]:
    assert shutil.which("readelf"), "readelf (binutils) is needed to read the binaries' ELF headers"
    dynamic = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    headers = subprocess.run(["readelf", "-l", str(binary)], capture_output=True, text=True, check=True).stdout
    interp = re.search(r"Requesting program interpreter: (\S+)\]", headers)
    return {
        "needed": re.findall(r"\(NEEDED\)\s+Shared library: \[(\S+)\]", dynamic),
        "interp": interp.group(1) if interp else None,
    }


LIB_DIRS = ["lib/{t}", "usr/lib/{t}", "lib", "usr/lib", "lib64", "usr/lib64"]


@pytest.mark.parametrize("name", IMAGES)
def test_binary_runs_on_the_image_libraries(name: str, rootfs: Dict[str, Path]) -> None:
    root = rootfs[name]
    binary = root / EXPECTED[name]["binary"]
    assert binary.is_file() and os.access(binary, os.X_OK), f"{name}: {binary} is not executable"
    elf = _elf(binary)
    assert elf["interp"], f"{name}: not dynamically linked (no interpreter)"
    loader = _in_root(root, str(elf["interp"]))
    assert loader.is_file(), f"{name}: ELF interpreter {elf['interp']} is not in the image"
    triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip() or "x86_64-linux-gnu"
    dirs = [_in_root(root, d.format(t=triplet)) for d in LIB_DIRS]
    for lib in elf["needed"]:  # type: ignore[union-attr]
        assert any((d / lib).exists() for d in dirs), f"{name}: {lib} (NEEDED) is not in the image"
    # The image's own loader and libraries, not the host's: glibc symbol versions must match.
    result = subprocess.run(
        [str(loader), "--inhibit-cache", "--library-path", ":".join(str(d) for d in dirs if d.is_dir()),
         str(binary), *EXPECTED[name]["run"]],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{name}: {result.stderr}"
    assert result.stdout.strip()


def test_base_has_certificates_users_and_tmp(images: Dict[str, Image]) -> None:
    image = images["flight-node"]
    entries = image.entries()
    bundle = image.read("etc/ssl/certs/ca-certificates.crt").decode()
    assert bundle.count("-----BEGIN CERTIFICATE-----") > 100
    assert bundle.count("-----BEGIN CERTIFICATE-----") == bundle.count("-----END CERTIFICATE-----")
    passwd = image.read("etc/passwd").decode()
    assert f"nonroot:x:{NONROOT}:{NONROOT}:" in passwd
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    # No shell and no package manager, like distroless.
    assert not {"bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/dpkg", "usr/bin/apt"} & set(entries)
    work = entries["var/lib/flight"]
    assert (work.uid, work.gid, work.mode) == (NONROOT, NONROOT, 0o750)
    for name in IMAGES:
        binary = images[name].entries()[EXPECTED[name]["binary"]]
        assert (binary.uid, binary.mode) == (0, 0o755)


# --- containerd ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Containerd:
    """A containerd of its own (own socket, root, state and runc root; CRI disabled), so a
    cluster's containerd on the same machine is never touched."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sock = base / "containerd.sock"
        self.runc_root = base / "runc"
        config = base / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{base}/root"\n'
            f'state = "{base}/state"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{base}/opt"\n'
        )
        self.log = open(base / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            assert self.proc.poll() is None, f"containerd exited: {(base / 'containerd.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "containerd did not answer within 30 s"
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"ctr {' '.join(args)}: {result.stderr}"
        return result

    def stop(self) -> None:
        for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
            self.ctr("tasks", "rm", "-f", task, check=False)
        for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
            self.ctr("containers", "rm", container, check=False)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        # Anything still mounted under the base (a snapshot of a container that failed).
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.base))), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    missing = [b for b in ("containerd", "ctr", "runc") if not shutil.which(b)]
    if missing:
        pytest.skip(f"containerd check not run: {', '.join(missing)} not installed (Debian: apt-get install containerd)")
    if os.geteuid() != 0:
        pytest.skip("containerd check not run: containerd needs root")
    # Short socket paths (108 bytes at most); the snapshots under it need a real file system.
    base = Path(tempfile.mkdtemp(prefix="flight-images-", dir=os.environ.get("IMAGES_CONTAINERD_DIR", "/tmp")))
    daemon = Containerd(base)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def imported(containerd: Containerd, images: Dict[str, Image], env: Dict[str, str]) -> Dict[str, str]:
    refs = {}
    for name, image in images.items():
        containerd.ctr("images", "import", str(image.path))
        refs[name] = _normalized(env[f"{_key(name)}_IMAGE"])
    listed = containerd.ctr("images", "ls", "-q").stdout.split()
    for ref in refs.values():
        assert ref in listed, f"{ref} not among the imported images {listed}"
    return refs


def _normalized(name: str) -> str:
    """The name containerd (and the kubelet) gives a Docker reference."""
    first = name.split("/")[0]
    if "/" not in name:
        return f"docker.io/library/{name}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{name}"
    return name


def _wait_http(url: str, containerd: Containerd, task: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.status
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = str(e)
        status = containerd.ctr("tasks", "ls", check=False).stdout
        assert task in status and "RUNNING" in status.split(task, 1)[1].split("\n", 1)[0], f"{task} stopped: {status}"
        time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s: {last}")


def _task_uid(containerd: Containerd, task: str) -> int:
    line = next(l for l in containerd.ctr("tasks", "ls").stdout.splitlines() if l.startswith(task + " "))
    pid = int(line.split()[1])
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def _run_detached(containerd: Containerd, ref: str, task: str, *args: str, command: List[str] = ()) -> None:
    containerd.ctr(
        "run", "-d", "--read-only", "--net-host", "--null-io", "--runc-root", str(containerd.runc_root),
        *args, ref, task, *command,
    )


def _remove(containerd: Containerd, task: str) -> None:
    containerd.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 10
    while containerd.ctr("tasks", "rm", task, check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    containerd.ctr("containers", "rm", task, check=False)


def test_containerd_runs_flight_node_as_the_pod_does(containerd: Containerd, imported: Dict[str, str]) -> None:
    """The image's entrypoint, user and working directory; the root file system read-only and
    an emptyDir-like mount at /var/lib/flight, as in a pool's StatefulSet."""
    http = _free_port()
    task = f"flight-node-check-{os.getpid()}"
    _run_detached(
        containerd, imported["flight-node"], task,
        "--env", f"FLIGHT_LISTEN=127.0.0.1:{_free_port()}",
        "--env", f"FLIGHT_HTTP_LISTEN=127.0.0.1:{http}",
        "--mount", f"type=tmpfs,src=tmpfs,dst=/var/lib/flight,options=rw:uid={NONROOT}:gid={NONROOT}:mode=0750",
    )
    try:
        assert _wait_http(f"http://127.0.0.1:{http}/healthz", containerd, task) == 200
        assert _task_uid(containerd, task) == NONROOT
    finally:
        _remove(containerd, task)


def test_containerd_runs_minio_as_the_chart_does(containerd: Containerd, imported: Dict[str, str]) -> None:
    """`server /data --address ...` as UID 1000, /data and /tmp mounted, root read-only."""
    port = _free_port()
    task = f"minio-check-{os.getpid()}"
    # The chart's arguments replace the image's Cmd; the entrypoint is the image's.
    _run_detached(
        containerd, imported["minio"], task,
        "--env", "MINIO_BROWSER=off", "--env", "HOME=/tmp",
        "--mount", "type=tmpfs,src=tmpfs,dst=/data,options=rw:uid=1000:gid=1000",
        "--mount", "type=tmpfs,src=tmpfs,dst=/tmp,options=rw:mode=1777",
        command=["/usr/bin/minio", "server", "/data", "--address", f"127.0.0.1:{port}", "--certs-dir", "/tmp/certs"],
    )
    try:
        assert _wait_http(f"http://127.0.0.1:{port}/minio/health/live", containerd, task) == 200
        assert _task_uid(containerd, task) == 1000
    finally:
        _remove(containerd, task)


def test_containerd_runs_the_operator(containerd: Containerd, imported: Dict[str, str]) -> None:
    task = f"flight-operator-check-{os.getpid()}"
    result = containerd.ctr(
        "run", "--rm", "--read-only", "--runc-root", str(containerd.runc_root),
        imported["flight-operator"], task, "/usr/local/bin/flight-operator", "--help",
    )
    assert "--node-image" in result.stdout
