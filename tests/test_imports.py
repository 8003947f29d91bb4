"""The house rules, read from the source: the transformers adapter and the vLLM adapter reach nothing of each
other, not even through a shared module, and no module imports another that imports it back."""

import ast
from pathlib import Path

import slerpmerge

ROOT = Path(slerpmerge.__file__).parent
# The transformers adapter: the hooks on a Hugging Face model and the release layer they stand on.
TRANSFORMERS_ADAPTER = {"hooks", "prefill", "decode", "layer_inputs", "state", "compat", "patching"}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imports(path: Path) -> set[str]:
    """The slerpmerge modules ``path`` imports, at any depth of its code, as names relative to the package."""
    name = module_name(path)
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("slerpmerge"):
                target = node.module[len("slerpmerge."):]
            else:
                continue
            candidates = [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]
            found |= {c for c in candidates if c in MODULES}
        elif isinstance(node, ast.Import):
            found |= {a.name[len("slerpmerge."):] for a in node.names if a.name[len("slerpmerge."):] in MODULES}
    found.discard(name)
    return found


MODULES = {module_name(p) for p in ROOT.rglob("*.py")}
GRAPH = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_graph_is_read():
    assert "hooks" in GRAPH["patching"] and "merge" in GRAPH["prefill"]  # the reader finds real imports


def test_the_vllm_adapter_reaches_nothing_of_the_transformers_adapter():
    for name in [m for m in MODULES if m.startswith("vllm_plugin.")]:
        bad = reach(name) & TRANSFORMERS_ADAPTER
        assert not bad, f"{name} reaches {sorted(bad)}"


def test_the_transformers_adapter_reaches_nothing_of_the_vllm_adapter():
    for name in TRANSFORMERS_ADAPTER:
        bad = {m for m in reach(name) if m.startswith("vllm_plugin")}
        assert not bad, f"{name} reaches {sorted(bad)}"


def test_no_import_circles():
    for name in GRAPH:
        assert name not in reach(name), f"{name} imports itself back"
