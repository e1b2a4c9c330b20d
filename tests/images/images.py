#!/usr/bin/env python3
"""Writes `docker save`-format image tarballs without Docker (called by tests/images/build).

An image is a list of layers (deterministic tar files: sorted entries, owner and mode set
explicitly, mtime 0) plus a config JSON; the tarball holds manifest.json, the config and
<digest>/layer.tar per layer, which `docker load` and `ctr images import` both read.

Layers and tarballs are cached under the output directory by the hash of their inputs (the
.deb files, the binaries, the image config), so a run whose inputs did not change only hashes
them. Standard library only: it runs with any Python 3.9+.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Dict, Iterable, List, NoReturn, Optional, Tuple

# Bump when the layout of what this script writes changes (invalidates every cache entry).
FORMAT = "images.py/1"
MTIME = 0
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"
NONROOT = 65532

# Runtime base of every image: what distroless/cc-debian12:nonroot gives the Rust binaries
# (glibc, libgcc, CA certificates, /etc/passwd with nonroot, /tmp), no shell.
BASE_PACKAGES = ["libc6", "libgcc-s1", "ca-certificates", "netbase"]

PASSWD = (
    "root:x:0:0:root:/root:/sbin/nologin\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = f"root:x:0:\nnobody:x:65534:\nnonroot:x:{NONROOT}:\n"
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> NoReturn:
    print(f"images: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def script_hash() -> str:
    return sha256_bytes(FORMAT.encode() + Path(__file__).read_bytes())[:16]


# --- Debian packages -------------------------------------------------------------------


def fetch_debs(packages: List[str], cache: Path) -> List[Path]:
    """The candidate versions of the packages from the host's apt lists, downloaded once."""
    cache.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["apt-get", "download", "--print-uris", *packages], capture_output=True, text=True
    )
    if res.returncode != 0:
        die(f"apt-get download --print-uris {' '.join(packages)} failed (run apt-get update?):\n{res.stderr}")
    debs: List[Path] = []
    for line in res.stdout.splitlines():
        m = re.match(r"^'[^']+' (\S+) \d+ (?:SHA256:)?([0-9a-f]{64})", line)
        if not m:
            continue
        name, digest = m.group(1), m.group(2)
        path = cache / name
        if not (path.exists() and sha256_file(path) == digest):
            pkg = name.split("_", 1)[0]
            version = name.split("_")[1].replace("%3a", ":")
            log(f"downloading {pkg}={version}")
            got = subprocess.run(
                ["apt-get", "download", "-q", f"{pkg}={version}"], cwd=cache, capture_output=True, text=True
            )
            if got.returncode != 0:
                die(f"apt-get download {pkg}={version} failed:\n{got.stderr}")
            if not path.exists() or sha256_file(path) != digest:
                die(f"{name}: downloaded file does not match its SHA256 {digest}")
        debs.append(path)
    if len(debs) != len(packages):
        die(f"apt-get printed {len(debs)} packages for {packages}:\n{res.stdout}")
    return debs


def deb_members(deb: Path) -> Iterable[Tuple[tarfile.TarInfo, Optional[bytes]]]:
    """Entries of a .deb's data archive (via dpkg-deb, whatever its compression)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for ti in tar:
            content = tar.extractfile(ti).read() if ti.isreg() else None  # type: ignore[union-attr]
            yield ti, content


def keep_from_deb(path: str) -> bool:
    """Drop what a runtime without a shell or package manager cannot use; keep copyrights."""
    if path.startswith("usr/share/doc/"):
        return path.endswith("/copyright") or path.count("/") == 3
    if path.startswith(("usr/share/man", "usr/share/lintian", "usr/share/locale", "usr/sbin/update-ca")):
        return False
    if path.startswith(("etc/ca-certificates", "usr/share/ca-certificates")):
        return False
    return True


# --- layers ----------------------------------------------------------------------------


class Layer:
    """Entries of one layer, written sorted with normalised metadata."""

    def __init__(self) -> None:
        self.entries: Dict[str, Tuple[tarfile.TarInfo, Optional[bytes], Optional[Path]]] = {}

    def _info(self, path: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = MTIME
        return ti

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(len(parts)):
            parent = "/".join(parts[: i + 1])
            if parent not in self.entries:
                self.entries[parent] = (self._info(parent, tarfile.DIRTYPE, 0o755, 0, 0), None, None)

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._parents(path)
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode, uid, gid), None, None)

    def file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self._parents(path)
        ti = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        ti.size = len(data)
        self.entries[path] = (ti, data, None)

    def host_file(self, path: str, source: Path, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._parents(path)
        ti = self._info(path, tarfile.REGTYPE, mode, uid, gid)
        ti.size = source.stat().st_size
        self.entries[path] = (ti, None, source)

    def symlink(self, path: str, target: str) -> None:
        self._parents(path)
        ti = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0)
        ti.linkname = target
        self.entries[path] = (ti, None, None)

    def add_deb_entry(self, ti: tarfile.TarInfo, content: Optional[bytes]) -> None:
        path = os.path.normpath(ti.name)
        if path == "." or not keep_from_deb(path):
            return
        if path in self.entries and ti.isdir():
            return  # directories shared by several packages: the first one wins
        self._parents(path)
        if ti.isdir():
            self.entries[path] = (self._info(path, tarfile.DIRTYPE, ti.mode & 0o7777, 0, 0), None, None)
        elif ti.issym():
            self.symlink(path, ti.linkname)
        elif ti.islnk():
            # A copy instead of a hard link: entries are written in path order, and a link
            # must not come before its target.
            target = self.entries.get(os.path.normpath(ti.linkname))
            if target is None or target[1] is None:
                die(f"{path}: hard link to {ti.linkname}, which is not a file seen before")
            self.file(path, target[1], ti.mode & 0o7777)
        elif ti.isreg():
            self.file(path, content or b"", ti.mode & 0o7777)

    def write(self, out: Path) -> str:
        """Writes the layer; returns its sha256 (the diff ID)."""
        tmp = out.with_suffix(".tmp")
        with open(tmp, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for path in sorted(self.entries):
                    ti, data, source = self.entries[path]
                    if ti.isdir():
                        ti.name = path + "/"
                    if data is not None:
                        tar.addfile(ti, io.BytesIO(data))
                    elif source is not None:
                        with open(source, "rb") as f:
                            tar.addfile(ti, f)
                    else:
                        tar.addfile(ti)
        digest = sha256_file(tmp)
        tmp.rename(out)
        return digest


def ca_bundle(debs: List[Path]) -> bytes:
    """/etc/ssl/certs/ca-certificates.crt as update-ca-certificates writes it: every
    certificate the package ships, in name order."""
    certs: List[Tuple[str, bytes]] = []
    for deb in debs:
        for ti, content in deb_members(deb):
            if ti.isreg() and ti.name.endswith(".crt") and "/usr/share/ca-certificates/" in ti.name:
                certs.append((ti.name, content or b""))
    if not certs:
        die("no certificates in the ca-certificates package")
    return b"".join(c if c.endswith(b"\n") else c + b"\n" for _, c in sorted(certs))


def base_layer(debs: List[Path]) -> Layer:
    layer = Layer()
    for deb in debs:
        for ti, content in deb_members(deb):
            layer.add_deb_entry(ti, content)
    # Systems whose packages install into /usr only (merged /usr) need the top-level links
    # the ELF interpreter path (/lib64/ld-linux-*.so.2) goes through.
    for top in ("bin", "sbin", "lib", "lib64"):
        if top not in layer.entries and any(p.startswith(f"usr/{top}/") for p in layer.entries):
            layer.symlink(top, f"usr/{top}")
    layer.file(CA_BUNDLE, ca_bundle(debs))
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", NSSWITCH.encode())
    layer.dir("tmp", 0o1777)
    layer.dir("home/nonroot", 0o700, NONROOT, NONROOT)
    layer.dir("root", 0o700)
    return layer


# --- cache -----------------------------------------------------------------------------


class Cache:
    def __init__(self, out: Path) -> None:
        self.layers = out / "cache" / "layers"
        self.keys = out / "cache" / "keys"
        self.layers.mkdir(parents=True, exist_ok=True)
        self.keys.mkdir(parents=True, exist_ok=True)

    def layer(self, key: str, make, what: str) -> Tuple[str, Path]:
        """(diff ID, layer file) of the layer with this input key, made once."""
        stamp = self.keys / key
        if stamp.exists():
            digest = stamp.read_text().strip()
            path = self.layers / f"{digest}.tar"
            if path.exists():
                return digest, path
        log(f"writing layer: {what}")
        tmp = self.layers / f"new-{key}.tar"
        digest = make().write(tmp)
        path = self.layers / f"{digest}.tar"
        tmp.rename(path)
        stamp.write_text(digest + "\n")
        return digest, path


# --- images ----------------------------------------------------------------------------


def image_config(arch: str, diff_ids: List[str], history: List[str], cfg: dict) -> bytes:
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": h} for h in history],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def write_archive(out: Path, name: str, config: bytes, layers: List[Tuple[str, Path]]) -> bool:
    """The `docker save` tarball; False when an identical one is already there."""
    config_digest = sha256_bytes(config)
    manifest = [
        {
            "Config": f"{config_digest}.json",
            "RepoTags": [name],
            "Layers": [f"{digest}/layer.tar" for digest, _ in layers],
        }
    ]
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    repo, _, tag = name.rpartition(":")
    repositories = json.dumps({repo: {tag: layers[-1][0]}}, separators=(",", ":")).encode()
    key = sha256_bytes(manifest_bytes + config)
    stamp = out.with_name(out.name + ".key")
    if out.exists() and stamp.exists() and stamp.read_text().strip() == key:
        return False

    def info(path: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path)
        ti.type, ti.size, ti.mode, ti.mtime = kind, size, 0o644 if kind == tarfile.REGTYPE else 0o755, MTIME
        return ti

    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for digest, path in layers:
            tar.addfile(info(f"{digest}/", kind=tarfile.DIRTYPE))
            tar.addfile(info(f"{digest}/VERSION", 3), io.BytesIO(b"1.0"))
            with open(path, "rb") as f:
                tar.addfile(info(f"{digest}/layer.tar", path.stat().st_size), f)
        tar.addfile(info(f"{config_digest}.json", len(config)), io.BytesIO(config))
        tar.addfile(info("manifest.json", len(manifest_bytes)), io.BytesIO(manifest_bytes))
        tar.addfile(info("repositories", len(repositories)), io.BytesIO(repositories))
    tmp.rename(out)
    stamp.write_text(key + "\n")
    return True


def app_layer(binary: Path, dest: str, dirs: List[Tuple[str, int, int]]) -> Layer:
    layer = Layer()
    layer.host_file(dest, binary, 0o755)
    for path, mode, uid in dirs:
        layer.dir(path, mode, uid, uid)
    return layer


LABELS = {
    "org.opencontainers.image.source": "https://github.com/trinity-data/arrow-flight-operator",
    "org.opencontainers.image.licenses": "Apache-2.0",
}
BASE_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    f"SSL_CERT_FILE=/{CA_BUNDLE}",
]


def specs(args: argparse.Namespace) -> Dict[str, dict]:
    """What each image holds on top of the base, mirroring the Dockerfiles."""
    return {
        "flight-node": {
            "name": args.flight_node_image,
            "binary": args.flight_node_bin,
            "dest": "usr/local/bin/flight-node",
            "dirs": [("var/lib/flight", 0o750, NONROOT)],
            "config": {
                "User": f"{NONROOT}:{NONROOT}",
                "Entrypoint": ["/usr/local/bin/flight-node"],
                "WorkingDir": "/var/lib/flight",
                "Env": BASE_ENV,
                "ExposedPorts": {"8815/tcp": {}, "8816/tcp": {}},
                "Labels": {
                    **LABELS,
                    "org.opencontainers.image.title": "flight-node",
                    "org.opencontainers.image.description": "Storage-backed Apache Arrow Flight server",
                },
            },
        },
        "flight-operator": {
            "name": args.flight_operator_image,
            "binary": args.flight_operator_bin,
            "dest": "usr/local/bin/flight-operator",
            "dirs": [],
            "config": {
                "User": f"{NONROOT}:{NONROOT}",
                "Entrypoint": ["/usr/local/bin/flight-operator"],
                "Env": BASE_ENV,
                "ExposedPorts": {"8080/tcp": {}},
                "Labels": {
                    **LABELS,
                    "org.opencontainers.image.title": "flight-operator",
                    "org.opencontainers.image.description": "Kubernetes operator for FlightPool and ArrowDataset resources",
                },
            },
        },
        # A pipeline step for the end-to-end tests: a static Go Flight client (tests/k8s/atom).
        "atom": {
            "name": args.atom_image,
            "binary": args.atom_bin,
            "dest": "usr/local/bin/atom",
            "dirs": [],
            "config": {
                "User": f"{NONROOT}:{NONROOT}",
                "Entrypoint": ["/usr/local/bin/atom"],
                "Env": BASE_ENV,
                "Labels": {
                    **LABELS,
                    "org.opencontainers.image.title": "atom",
                    "org.opencontainers.image.description": "A static Arrow Flight client run as a pipeline step in end-to-end tests",
                },
            },
        },
        # The chart's development MinIO runs `server /data ...` as UID 1000 with /data and
        # /tmp mounted; the entrypoint is the server binary itself.
        "minio": {
            "name": args.minio_image,
            "binary": args.minio_bin,
            "dest": "usr/bin/minio",
            "dirs": [("data", 0o755, 1000)],
            "config": {
                "User": "1000:1000",
                "Entrypoint": ["/usr/bin/minio"],
                "Cmd": ["server", "/data"],
                "Env": [*BASE_ENV, "HOME=/tmp"],
                "ExposedPorts": {"9000/tcp": {}},
                "Labels": {
                    "org.opencontainers.image.title": "minio",
                    "org.opencontainers.image.description": f"MinIO server built from {args.minio_version or 'the Go module proxy'}",
                },
            },
        },
    }


def build(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(out)
    arch = subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()
    debs = fetch_debs(BASE_PACKAGES, out / "cache" / "debs")
    base_key = sha256_bytes(
        "\n".join([script_hash(), arch] + [f"{d.name} {sha256_file(d)}" for d in debs]).encode()
    )
    base = cache.layer(f"base-{base_key}", lambda: base_layer(debs), "runtime base (" + ", ".join(d.name for d in debs) + ")")
    base_history = "runtime base: " + " ".join(d.name.rsplit("_", 1)[0] for d in debs)
    all_specs = specs(args)
    env_lines = []
    for image in args.images:
        spec = all_specs[image]
        binary = Path(spec["binary"])
        if not binary.is_file():
            die(f"{image}: {binary} does not exist")
        bin_hash = sha256_file(binary)
        key = sha256_bytes(json.dumps([script_hash(), bin_hash, spec["dest"], spec["dirs"]]).encode())
        top = cache.layer(
            f"{image}-{key}",
            lambda spec=spec, binary=binary: app_layer(binary, spec["dest"], spec["dirs"]),
            f"{image} ({binary})",
        )
        config = image_config(
            arch,
            [base[0], top[0]],
            [base_history, f"/{spec['dest']} (sha256 {bin_hash[:12]})"],
            spec["config"],
        )
        target = out / f"{image}.tar"
        if write_archive(target, spec["name"], config, [base, top]):
            log(f"wrote {target} ({spec['name']}, {target.stat().st_size >> 20} MiB)")
        else:
            log(f"{target} is up to date ({spec['name']})")
        env_lines.append(f"{image.upper().replace('-', '_')}_IMAGE={spec['name']}")
        env_lines.append(f"{image.upper().replace('-', '_')}_TAR={target.resolve()}")
    env_file = out / "images.env"
    old = env_file.read_text().splitlines() if env_file.exists() else []
    keep = [l for l in old if l.split("=", 1)[0] not in {e.split("=", 1)[0] for e in env_lines}]
    env_file.write_text("\n".join(sorted(keep + env_lines)) + "\n")


# --- chart defaults --------------------------------------------------------------------


def yaml_scalar(path: Path, keys: List[str]) -> str:
    """A scalar of a block-style YAML file by its key path (enough for values.yaml and
    Chart.yaml, so this script needs no YAML library)."""
    indent_stack: List[Tuple[int, str]] = []
    for raw in path.read_text().splitlines():
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):\s*(.*?)\s*(?:#.*)?$", raw)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        while indent_stack and indent_stack[-1][0] >= indent:
            indent_stack.pop()
        indent_stack.append((indent, key))
        if [k for _, k in indent_stack] == keys:
            return value.strip("\"'")
    die(f"{path}: no {'.'.join(keys)}")


def defaults(args: argparse.Namespace) -> None:
    chart = Path(args.chart)
    app_version = yaml_scalar(chart / "Chart.yaml", ["appVersion"])
    values = chart / "values.yaml"
    print(f"FLIGHT_NODE_IMAGE={yaml_scalar(values, ['nodeImage', 'repository'])}:{app_version}")
    print(f"FLIGHT_OPERATOR_IMAGE={yaml_scalar(values, ['image', 'repository'])}:{app_version}")
    print(
        f"MINIO_IMAGE={yaml_scalar(values, ['minio', 'image', 'repository'])}:"
        f"{yaml_scalar(values, ['minio', 'image', 'tag'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("defaults", help="print the chart's default image names as KEY=value")
    d.add_argument("--chart", required=True)
    b = sub.add_parser("build", help="write image tarballs")
    b.add_argument("--out", required=True)
    b.add_argument("--flight-node-image", required=True)
    b.add_argument("--flight-node-bin", required=True)
    b.add_argument("--flight-operator-image", required=True)
    b.add_argument("--flight-operator-bin", required=True)
    b.add_argument("--minio-image", required=True)
    b.add_argument("--minio-bin", required=True)
    b.add_argument("--minio-version", default="")
    b.add_argument("--atom-image", default="trinity-flight/atom:e2e")
    b.add_argument("--atom-bin", default="/nonexistent")
    b.add_argument("images", nargs="+", choices=["flight-node", "flight-operator", "minio", "atom"])
    args = parser.parse_args()
    {"defaults": defaults, "build": build}[args.command](args)


if __name__ == "__main__":
    main()
