"""The shape of the Rust code, checked: no import circle between the modules of any crate,
the operator's dependency tree free of the server's codecs and allocator, and no module
over ~700 lines before its tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modules import CRATES, ROOT, cycles, graph

MAX_LINES = 720


@pytest.mark.parametrize("crate", sorted(CRATES))
def test_no_import_circle_between_modules(crate):
    assert cycles(graph(CRATES[crate])) == [], f"{crate} has an import circle"


def test_the_module_graph_sees_circles():
    """The checker itself finds a circle, and only a circle."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def code_lines(path: Path) -> int:
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#[cfg(test)]"):
            return i
    return len(lines)


def test_no_module_over_the_size_limit():
    too_big = {}
    for src in CRATES.values():
        for f in src.rglob("*.rs"):
            rel = str(f.relative_to(ROOT))
            n = code_lines(f)
            if n > MAX_LINES and not f.name.endswith("_tests.rs"):
                too_big[rel] = n
    assert not too_big, f"modules over {MAX_LINES} lines before their tests: {too_big}"


def test_the_operator_links_no_codec_or_allocator():
    out = subprocess.run(["cargo", "tree", "-p", "flight-operator", "-e", "normal",
                          "--prefix", "none", "--format", "{p}"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    crates = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert "flight-core" in crates and "kube" in crates, sorted(crates)[:20]
    banned = {"flight-node", "parquet", "arrow-csv", "arrow-json", "tikv-jemallocator",
              "tikv-jemalloc-sys"}
    assert not crates & banned, sorted(crates & banned)
