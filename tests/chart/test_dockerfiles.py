"""The Dockerfiles against the Cargo workspace and .dockerignore.

`docker build -f flight-node/Dockerfile .` (and the operator's) runs `cargo build --locked -p
<crate>` on whatever the Dockerfile copied out of the build context. Cargo loads every workspace
member's manifest (and the path dependencies of all of them) before it builds anything, so a
member the Dockerfile leaves out, or that .dockerignore keeps out of the context, breaks the
image build with "failed to load manifest for workspace member". These tests rebuild the
builder stage's file tree from the Dockerfile's COPY instructions and the context that
.dockerignore lets through (Docker's matching rules), then check it two ways:

* statically: every manifest, target entry point, source file, build script and
  include_str!/include_bytes! file that the build needs is in the tree;
* with Cargo itself: `cargo metadata --locked --offline` on a copy of that tree loads the
  workspace and accepts Cargo.lock unchanged.

They also check what the classic builder (docker 20.10's default) and an offline machine can
do: no `# syntax=` line, no BuildKit-only flags, base images pinned and named in the header.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "flight-node": ROOT / "flight-node" / "Dockerfile",
    "flight-operator": ROOT / "operator" / "Dockerfile",
}
CHART_DIR = ROOT / "charts" / "flight-operator"


# --- Dockerfile parsing ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    flags: Dict[str, str]
    args: List[str]
    text: str


@dataclass
class Stage:
    base: str
    name: Optional[str]
    instructions: List[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    path: Path
    directives: Dict[str, str]
    comments: List[str]
    stages: List[Stage]


def parse_dockerfile(path: Path) -> Dockerfile:
    lines = path.read_text().splitlines()
    directives: Dict[str, str] = {}
    # Parser directives (`# syntax=...`, `# escape=...`) are only recognised at the very top.
    for line in lines:
        m = re.match(r"^#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$", line)
        if not m:
            break
        directives[m.group(1).lower()] = m.group(2)
    comments = [line.lstrip("#").strip() for line in lines if line.lstrip().startswith("#")]

    logical: List[str] = []
    buf = ""
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        if buf.strip():
            logical.append(buf.strip())
        buf = ""
    assert not buf.strip(), f"{path}: dangling line continuation"

    stages: List[Stage] = []
    for text in logical:
        keyword, _, rest = text.partition(" ")
        keyword = keyword.upper()
        if rest.lstrip().startswith("["):
            words = json.loads(rest)
        else:
            words = rest.split()
        flags: Dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            flags[name] = value
        ins = Instruction(keyword, flags, words, text)
        if keyword == "FROM":
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        else:
            assert stages, f"{path}: {keyword} before the first FROM"
            stages[-1].instructions.append(ins)
    return Dockerfile(path, directives, comments, stages)


# --- the build context: .dockerignore with Docker's matching rules -----------------------


def _compile_ignore_pattern(pattern: str) -> "re.Pattern[str]":
    """One .dockerignore pattern as a regex, the way moby/patternmatcher compiles it."""
    regex = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 2
                if i < len(pattern) and pattern[i] == "/":
                    i += 1
                regex += ".*" if i >= len(pattern) else "(.*/)?"
                continue
            regex += "[^/]*"
        elif ch == "?":
            regex += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            regex += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i)
            regex += pattern[i : end + 1]
            i = end
        else:
            regex += re.escape(ch)
        i += 1
    return re.compile(regex + "$")


def load_dockerignore(path: Path) -> List[Tuple[bool, "re.Pattern[str]"]]:
    patterns = []
    if not path.exists():
        return patterns
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        # Docker cleans each pattern like filepath.Clean and drops a leading "/".
        cleaned = os.path.normpath(line).lstrip("/")
        patterns.append((exclusion, _compile_ignore_pattern(cleaned)))
    return patterns


def ignored(rel: str, patterns: List[Tuple[bool, "re.Pattern[str]"]]) -> bool:
    """moby/patternmatcher MatchesOrParentMatches: the last matching pattern wins, and a
    pattern that matches a parent directory matches the file."""
    matched = False
    parents = str(PurePosixPath(rel).parent).split("/")
    for exclusion, regex in patterns:
        if exclusion != matched:
            continue
        match = bool(regex.match(rel))
        if not match and parents != ["."]:
            match = any(regex.match("/".join(parents[: i + 1])) for i in range(len(parents)))
        if match:
            matched = not exclusion
    return matched


def repository_files(root: Path) -> List[str]:
    """What a clone holds: tracked files plus new ones git does not ignore."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [
            str(p.relative_to(root))
            for p in root.rglob("*")
            if p.is_file() and not {".git", "target", ".venv"} & set(p.relative_to(root).parts)
        ]
    return sorted(f for f in files if (root / f).is_file())


def build_context(root: Path) -> Set[str]:
    patterns = load_dockerignore(root / ".dockerignore")
    return {f for f in repository_files(root) if not ignored(f, patterns)}


# --- the builder stage's file tree -------------------------------------------------------


def _copy_sources(src: str, context: Set[str]) -> List[Tuple[str, str]]:
    """(context file, path relative to the COPY destination) pairs of one COPY source."""
    src = os.path.normpath(src).lstrip("/")
    if src == ".":
        return [(f, f) for f in context]
    if any(c in src for c in "*?["):
        regex = _compile_ignore_pattern(src)
        hits = sorted({f for f in context if regex.match(f)} | {
            d for f in context for d in _parents(f) if regex.match(d)
        })
        out: List[Tuple[str, str]] = []
        for hit in hits:
            out += _copy_sources(hit, context) if hit not in context else [(hit, PurePosixPath(hit).name)]
        return out
    if src in context:
        return [(src, PurePosixPath(src).name)]
    prefix = src + "/"
    return [(f, f[len(prefix) :]) for f in context if f.startswith(prefix)]


def _parents(rel: str) -> List[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def stage_tree(dockerfile: Dockerfile, stage: Stage, context: Set[str]) -> Dict[str, str]:
    """Absolute path in the stage -> context file, for every COPY from the context."""
    tree: Dict[str, str] = {}
    workdir = "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / ins.args[0])
        elif ins.keyword in ("COPY", "ADD") and "from" not in ins.flags:
            *sources, dest = ins.args
            dest_is_dir = dest.endswith("/") or len(sources) > 1
            dest_path = PurePosixPath(workdir) / dest
            for src in sources:
                pairs = _copy_sources(src, context)
                assert pairs, f"{dockerfile.path}: `{ins.text}`: {src} is not in the build context"
                single_file = len(pairs) == 1 and pairs[0][0] == os.path.normpath(src)
                for ctx_file, rel in pairs:
                    if single_file and not dest_is_dir:
                        target = dest_path
                    else:
                        target = dest_path / rel
                    tree[str(target)] = ctx_file
    return tree


def cargo_builds(stage: Stage) -> List[Tuple[str, List[str]]]:
    """(working directory, packages) of every `cargo build` in the stage's RUN lines."""
    out = []
    workdir = "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / ins.args[0])
        if ins.keyword != "RUN":
            continue
        for command in re.split(r"&&|;", " ".join(ins.args)):
            words = command.split()
            if words[:2] != ["cargo", "build"]:
                continue
            assert "--locked" in words, f"`{command.strip()}` does not build from Cargo.lock (--locked)"
            packages = [words[i + 1] for i, w in enumerate(words) if w in ("-p", "--package")]
            packages += [w.split("=", 1)[1] for w in words if w.startswith("--package=")]
            out.append((workdir, packages))
    return out


# --- what Cargo needs --------------------------------------------------------------------


def _dependency_tables(manifest: dict) -> Iterable[dict]:
    for key in ("dependencies", "dev-dependencies", "build-dependencies"):
        yield manifest.get(key, {})
    for target in manifest.get("target", {}).values():
        for key in ("dependencies", "dev-dependencies", "build-dependencies"):
            yield target.get(key, {})


def workspace_packages(root: Path) -> Dict[str, Tuple[str, dict]]:
    """name -> (directory relative to root, manifest) for the workspace members and every
    path dependency reachable from them (Cargo loads all of those)."""
    top = tomllib.loads((root / "Cargo.toml").read_text())
    ws = top.get("workspace", {})
    excluded = {os.path.normpath(e) for e in ws.get("exclude", [])}
    pending: List[str] = []
    for member in ws.get("members", []):
        matches = sorted(root.glob(member)) if any(c in member for c in "*?[") else [root / member]
        pending += [os.path.normpath(str(p.relative_to(root))) for p in matches]
    for patch in top.get("patch", {}).values():
        pending += [os.path.normpath(d["path"]) for d in patch.values() if isinstance(d, dict) and "path" in d]
    packages: Dict[str, Tuple[str, dict]] = {}
    seen: Set[str] = set()
    while pending:
        rel = pending.pop(0)
        if rel in seen or rel in excluded:
            continue
        seen.add(rel)
        manifest_path = root / rel / "Cargo.toml"
        assert manifest_path.is_file(), f"{rel}/Cargo.toml: the workspace names it but it is missing"
        manifest = tomllib.loads(manifest_path.read_text())
        packages[manifest["package"]["name"]] = (rel, manifest)
        for table in _dependency_tables(manifest):
            for dep in table.values():
                if isinstance(dep, dict) and "path" in dep:
                    pending.append(os.path.normpath(os.path.join(rel, dep["path"])))
    return packages


def entry_points(root: Path, rel: str, manifest: dict) -> List[str]:
    """The lib and bin targets Cargo finds when it loads a manifest (at least one must exist)."""
    out = []
    lib = manifest.get("lib", {})
    out.append(lib.get("path", "src/lib.rs"))
    out += [b["path"] for b in manifest.get("bin", []) if "path" in b]
    out.append("src/main.rs")
    bin_dir = root / rel / "src" / "bin"
    if bin_dir.is_dir():
        out += [str(p.relative_to(root / rel)) for p in bin_dir.rglob("*.rs")]
    return [os.path.normpath(os.path.join(rel, p)) for p in out if (root / rel / p).is_file()]


def path_dependencies(name: str, packages: Dict[str, Tuple[str, dict]]) -> Set[str]:
    """The package and the workspace packages it links (normal and build dependencies)."""
    by_dir = {rel: n for n, (rel, _) in packages.items()}
    out: Set[str] = set()
    pending = [name]
    while pending:
        n = pending.pop()
        if n in out:
            continue
        out.add(n)
        rel, manifest = packages[n]
        for key in ("dependencies", "build-dependencies"):
            tables = [manifest.get(key, {})] + [t.get(key, {}) for t in manifest.get("target", {}).values()]
            for table in tables:
                for dep in table.values():
                    if isinstance(dep, dict) and "path" in dep:
                        pending.append(by_dir[os.path.normpath(os.path.join(rel, dep["path"]))])
    return out


INCLUDE = re.compile(r'include_(?:str|bytes)!\(\s*"([^"]+)"\s*\)')


def compiled_files(root: Path, rel: str, manifest: dict, files: List[str]) -> Set[str]:
    """Sources of a package that is compiled: its manifest, src/, build script, and what
    the sources include_str!/include_bytes! by relative path."""
    needed = {f"{rel}/Cargo.toml"}
    needed |= {f for f in files if f.startswith(f"{rel}/src/")}
    build = manifest["package"].get("build", "build.rs")
    if isinstance(build, str) and (root / rel / build).is_file():
        needed.add(os.path.normpath(f"{rel}/{build}"))
    for f in sorted(needed):
        if not f.endswith(".rs"):
            continue
        for include in INCLUDE.findall((root / f).read_text()):
            if include.startswith("/") or "$" in include or "{" in include:
                continue
            needed.add(os.path.normpath(os.path.join(os.path.dirname(f), include)))
    return needed


def required_files(root: Path, built: List[str]) -> Dict[str, str]:
    """Path relative to the cargo working directory -> why Cargo needs it."""
    packages = workspace_packages(root)
    files = repository_files(root)
    need: Dict[str, str] = {
        "Cargo.toml": "the workspace manifest",
        "Cargo.lock": "cargo build --locked",
    }
    for name, (rel, manifest) in packages.items():
        need[f"{rel}/Cargo.toml"] = f"Cargo loads every member and path dependency ({name})"
        points = entry_points(root, rel, manifest)
        assert points, f"{rel}: no lib or bin target"
        for p in points:
            need.setdefault(p, f"a target Cargo finds when it loads {name}")
    for package in built:
        assert package in packages, f"cargo build -p {package}: no such workspace package"
        for dep in sorted(path_dependencies(package, packages)):
            rel, manifest = packages[dep]
            for f in compiled_files(root, rel, manifest, files):
                need.setdefault(f, f"compiled for {package} ({dep})")
    return need


# --- tests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context() -> Set[str]:
    return build_context(ROOT)


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_builder_stage_has_everything_cargo_needs(image: str, context: Set[str]) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    checked = 0
    for stage in dockerfile.stages:
        builds = cargo_builds(stage)
        if not builds:
            continue
        tree = stage_tree(dockerfile, stage, context)
        for workdir, packages in builds:
            assert packages, f"{dockerfile.path}: cargo build without -p builds the whole workspace"
            for rel, why in sorted(required_files(ROOT, packages).items()):
                path = str(PurePosixPath(workdir) / rel)
                hint = (
                    "excluded by .dockerignore"
                    if rel not in context and (ROOT / rel).exists()
                    else "not copied by the Dockerfile"
                )
                assert path in tree, f"{dockerfile.path}: {path} ({why}) is {hint}"
                assert tree[path] == rel, f"{dockerfile.path}: {path} comes from {tree[path]}, not {rel}"
                checked += 1
    assert checked, f"{dockerfile.path}: no `cargo build` in any stage"


def _host_triple() -> str:
    out = subprocess.run(["rustc", "-vV"], check=True, capture_output=True, text=True).stdout
    return next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("host: "))


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_cargo_loads_the_copied_workspace_with_the_lock_file(
    image: str, context: Set[str], tmp_path: Path
) -> None:
    """Cargo itself on the builder stage's tree: every member loads, Cargo.lock is accepted
    as is (--locked), offline (the crates the workspace build fetched are reused)."""
    assert shutil.which("cargo") and shutil.which("rustc"), "cargo and rustc must be on PATH"
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    stage = next(s for s in dockerfile.stages if cargo_builds(s))
    workdir, packages = cargo_builds(stage)[0]
    tree = stage_tree(dockerfile, stage, context)
    for path, ctx_file in tree.items():
        target = tmp_path / PurePosixPath(path).relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / ctx_file, target)
    manifest = tmp_path / PurePosixPath(workdir).relative_to("/") / "Cargo.toml"
    result = subprocess.run(
        [
            "cargo", "metadata", "--locked", "--offline", "--format-version", "1",
            "--filter-platform", _host_triple(), "--manifest-path", str(manifest),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target")},
    )
    assert result.returncode == 0, f"cargo on the tree {dockerfile.path} copies:\n{result.stderr}"
    metadata = json.loads(result.stdout)
    names = {p["name"] for p in metadata["packages"] if p["id"] in metadata["workspace_members"]}
    assert set(packages) <= names, f"{packages} not among the loaded members {sorted(names)}"


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_builds_with_the_classic_builder_and_pulls_only_documented_bases(image: str) -> None:
    dockerfile = parse_dockerfile(DOCKERFILES[image])
    # A `# syntax=` directive makes BuildKit pull a frontend image from Docker Hub first.
    assert "syntax" not in dockerfile.directives, f"{dockerfile.path}: `# syntax=` pulls a frontend image"
    stage_names = {s.name for s in dockerfile.stages if s.name}
    header = "\n".join(dockerfile.comments)
    for stage in dockerfile.stages:
        if stage.base in stage_names:
            continue
        name, _, tag = stage.base.rpartition(":") if ":" in stage.base.split("/")[-1] else (stage.base, "", "")
        assert tag and tag != "latest" or "@sha256:" in stage.base, f"{dockerfile.path}: {stage.base} is not pinned"
        # Every base comes from a registry: say which, so an offline build knows what to provide.
        assert stage.base in header, f"{dockerfile.path}: base image {stage.base} is not named in the comments"
        for ins in stage.instructions:
            # The classic builder (docker 20.10's default) knows RUN without flags and
            # COPY --from/--chown only; heredocs are BuildKit-only as well.
            if ins.keyword == "RUN":
                assert not ins.flags, f"{dockerfile.path}: `{ins.text[:60]}` needs BuildKit"
                assert "<<" not in ins.text, f"{dockerfile.path}: heredoc needs BuildKit"
            if ins.keyword in ("COPY", "ADD"):
                assert set(ins.flags) <= {"from", "chown"}, f"{dockerfile.path}: {ins.flags} needs BuildKit"


def _chart_defaults() -> Tuple[dict, str]:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    app_version = str(yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["appVersion"])
    return values, app_version


def test_final_images_match_what_the_chart_and_operator_run() -> None:
    """The documented `docker build -t` names are the chart's default images, the operator's
    default node image is the flight-node one, and the images run as the chart's UID."""
    values, app_version = _chart_defaults()
    node_image = f"{values['nodeImage']['repository']}:{app_version}"
    operator_image = f"{values['image']['repository']}:{app_version}"
    config_rs = (ROOT / "operator" / "src" / "controller" / "pool" / "build.rs").read_text()
    default_node = re.search(r'DEFAULT_NODE_IMAGE: &str = "([^"]+)"', config_rs)
    assert default_node, "DEFAULT_NODE_IMAGE not found in operator/src/controller/pool/build.rs"
    assert default_node.group(1) == node_image
    uid = values["podSecurityContext"]["runAsUser"]
    for image, tag in (("flight-node", node_image), ("flight-operator", operator_image)):
        dockerfile = parse_dockerfile(DOCKERFILES[image])
        assert f"-t {tag} " in "\n".join(dockerfile.comments), f"{dockerfile.path}: build command not tagged {tag}"
        final = dockerfile.stages[-1]
        users = [i.args[0] for i in final.instructions if i.keyword == "USER"]
        assert users and users[-1] == f"{uid}:{uid}", f"{dockerfile.path}: USER {users} is not the chart's {uid}"
        entrypoint = [i.args for i in final.instructions if i.keyword == "ENTRYPOINT"]
        assert entrypoint == [[f"/usr/local/bin/{image}"]]


def test_dockerignore_matching_follows_docker() -> None:
    """The matcher the tests above rely on, on the cases .dockerignore uses."""
    patterns = [
        (False, _compile_ignore_pattern("*")),
        (True, _compile_ignore_pattern("flight-node")),
        (True, _compile_ignore_pattern("tests/k8s/etcd-path")),
        (False, _compile_ignore_pattern("**/target")),
        (False, _compile_ignore_pattern("flight-node/Dockerfile")),
    ]
    assert ignored("README.md", patterns)
    assert ignored("tests/k8s/control-plane", patterns)
    assert not ignored("flight-node/src/main.rs", patterns)
    assert not ignored("tests/k8s/etcd-path/src/main.rs", patterns)
    assert ignored("flight-node/target/release/flight-node", patterns)
    assert ignored("flight-node/Dockerfile", patterns)
    assert ignored("target/debug/x", patterns)
