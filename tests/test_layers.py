"""The shape of the code: api_client/ (the contract and the client) never
imports worker/, torch or a quantization library; worker/ imports
api_client/ only downward; no import cycle; every method of the catalog has
its implementation."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "llmcompressor", "gptqmodel", "bitsandbytes", "compressed_tensors", "accelerate",
         "datasets", "safetensors", "numpy")


def imports_of(path: Path, package: str) -> set[str]:
    """Modules `path` imports, relative imports resolved, as dotted names."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                base = ".".join([*parts, base]) if base else ".".join(parts)
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def modules(package: str) -> dict[str, Path]:
    out = {}
    for path in (ROOT / package).rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def test_the_client_never_imports_the_worker_or_heavy_libraries():
    edges = []
    for name, path in modules("api_client").items():
        for imported in imports_of(path, "api_client"):
            top = imported.split(".")[0]
            if top == "worker" or top in HEAVY:
                edges.append(f"{name} → {imported}")
    assert edges == []


def test_no_import_cycle_between_modules():
    graph = {}
    known = {**modules("api_client"), **modules("worker")}
    for name, path in known.items():
        graph[name] = {m for m in imports_of(path, name.split(".")[0]) if m in known and m != name}
    # Edges into a package's __init__ from its own submodules are how a
    # registry is filled (catalog, storage, methods): the __init__ imports the
    # submodules last; count only edges that are not that.
    def real(a, b):
        return not (a.startswith(b + ".") and b in known and known[b].name == "__init__.py")

    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if not real(node, nxt) or not real(nxt, node):
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, [node]):
            break
    assert cycle == []


def test_resolving_every_method_loads_neither_torch_nor_the_worker(tiny_model):
    code = f"""
import sys
from api_client import catalog
from api_client.cli import cli
from api_client.client import Client
from api_client.spec import JobSpec, resolve
for name in catalog.names():
    for fmt in catalog.get(name).formats:
        resolve(JobSpec(model={str(tiny_model)!r}, method=name, format=fmt))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} + ("worker",))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_catalog_method_has_one_implementation():
    from api_client import catalog
    from worker import methods

    assert methods.implemented() == catalog.names()
