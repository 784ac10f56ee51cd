"""The package import graph has no cycle and every import goes down the declared layer order.

Nodes are diffalign's first-level modules and subpackages (``diffalign.trainer``, ``diffalign.config``, ...;
the top-level ``modalities/`` folder is installed as ``diffalign.modalities``). Every Import / ImportFrom node
anywhere in a file counts, including imports inside functions: a lazy import is still a dependency.
The order is docs/design.md, section "1. Layers"; keep the two in step.
"""
from __future__ import annotations

import ast
import os
import re
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# source folder -> the package it is installed as (setup.py's package_dir)
PACKAGES = {"diffalign": "diffalign", "modalities": "diffalign.modalities"}

# top to bottom: a module may import only from layers below its own (never a peer in the same layer)
LAYERS: List[Tuple[str, ...]] = [
    ("cli",),
    ("demo",),
    ("eval",),
    ("inference",),
    ("trainer",),
    ("config",),
    ("algorithms",),
    ("mdp",),
    ("modalities",),
    ("rewards",),
    ("data",),
    ("registry", "schedules", "seeding"),
    ("ops",),
    ("_C",),
]
LAYER_OF = {f"diffalign.{name}": i for i, layer in enumerate(LAYERS) for name in layer}


def _modules():
    for folder, package in PACKAGES.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):  # symlinks are not followed
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                parts = os.path.relpath(os.path.join(dirpath, f), base)[:-3].split(os.sep)
                is_pkg = parts[-1] == "__init__"
                if is_pkg:
                    parts = parts[:-1]
                yield os.path.join(dirpath, f), ".".join([package] + parts), is_pkg


def node_of(module: str) -> Optional[str]:
    parts = module.split(".")
    if parts[0] != "diffalign" or len(parts) < 2:
        return None  # outside diffalign, or the top package itself (its __init__ imports nothing)
    return ".".join(parts[:2])


def _targets(tree, module: str, is_pkg: bool):
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                yield n.lineno, a.name
        elif isinstance(n, ast.ImportFrom):
            if n.level:  # relative: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (n.level - 1)]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            yield n.lineno, target
            if target == "diffalign":  # from diffalign import trainer
                for a in n.names:
                    yield n.lineno, f"diffalign.{a.name}"


def import_graph() -> Dict[Tuple[str, str], List[str]]:
    """(from node, to node) -> ["path:line", ...] for every import between two different nodes."""
    edges: Dict[Tuple[str, str], List[str]] = defaultdict(list)
    for path, module, is_pkg in _modules():
        src = node_of(module)
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for line, target in _targets(tree, module, is_pkg):
            dst = node_of(target)
            if dst and src and dst != src:
                edges[(src, dst)].append(f"{os.path.relpath(path, ROOT)}:{line}")
    return dict(edges)


def find_cycle(edges) -> Optional[List[str]]:
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_graph_sees_known_edges():
    """The graph builder itself: lazy imports inside functions count, and the modality folder maps in."""
    edges = import_graph()
    assert ("diffalign.cli", "diffalign.trainer") in edges  # cli/train.py imports it inside run()
    assert ("diffalign.modalities", "diffalign.registry") in edges  # modalities/*/entry.py
    assert ("diffalign.config", "diffalign.registry") in edges


def test_no_import_cycle():
    edges = import_graph()
    cycle = find_cycle(edges)
    if cycle:
        steps = [f"{a} -> {b} ({', '.join(edges[(a, b)][:3])})" for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("package import cycle:\n  " + "\n  ".join(steps))


def test_every_import_goes_down_the_layers():
    edges = import_graph()
    nodes = {n for e in edges for n in e}
    undeclared = sorted(n for n in nodes if n not in LAYER_OF)
    assert not undeclared, f"declare these packages in LAYERS (and docs/design.md 'Layers'): {undeclared}"
    bad = [f"{a} (layer {LAYER_OF[a]}) -> {b} (layer {LAYER_OF[b]}): {', '.join(locs[:3])}"
           for (a, b), locs in sorted(edges.items()) if LAYER_OF[a] >= LAYER_OF[b]]
    assert not bad, "imports that go up or sideways in the layer order:\n  " + "\n  ".join(bad)


def test_design_doc_declares_the_same_order():
    with open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"<!-- layer order.*?-->\n```\n(.*?)```", text, re.S)
    assert m, "docs/design.md lost its layer-order block"
    declared = [tuple(name.strip() for name in line.split("|")[0].split(",")) for line in m.group(1).strip().splitlines()]
    assert declared == LAYERS, f"docs/design.md declares {declared}, this test {LAYERS}"


def test_registry_imports_nothing_from_diffalign():
    """The registry is low and must not import the modalities (or rewards) it lists: entries load lazily."""
    edges = import_graph()
    assert not [b for (a, b) in edges if a == "diffalign.registry"]
