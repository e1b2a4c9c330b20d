"""The module graph of each Rust crate of the workspace, from its sources: module `a`
depends on module `b` when a file of `a` names `crate::b` (in a `use` or a path), or
`super::b` from a top-level module's child. Used by test_structure.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CRATES = {"flight-core": ROOT / "flight-core" / "src", "flight-node": ROOT / "flight-node" / "src",
          "flight-operator": ROOT / "operator" / "src"}

_CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
_GROUPED = re.compile(r"\bcrate::\{([^}]*)\}", re.S)
_TESTS = re.compile(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", re.S)


def top_module(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    first = rel.parts[0]
    return first[:-3] if first.endswith(".rs") else first


def strip_tests_and_comments(text: str) -> str:
    """The code of a file without its `#[cfg(test)] mod … { … }` block and comments:
    tests may reach anywhere; documentation links are not dependencies."""
    m = _TESTS.search(text)
    if m:
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        text = text[:m.start()] + text[i:]
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def graph(src: Path) -> dict[str, set[str]]:
    modules = {top_module(src, f) for f in src.rglob("*.rs")} - {"lib", "main", "bin"}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for file in src.rglob("*.rs"):
        me = top_module(src, file)
        if me not in edges:
            continue
        # Files under src/<module>/ that are tests of that module (reconcile_tests.rs …).
        if file.name.endswith("_tests.rs"):
            continue
        code = strip_tests_and_comments(file.read_text())
        names = set(_CRATE_PATH.findall(code))
        for group in _GROUPED.findall(code):
            names |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        edges[me] |= {n for n in names if n in modules and n != me}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


if __name__ == "__main__":
    for crate, src in CRATES.items():
        e = graph(src)
        print(crate, cycles(e))
