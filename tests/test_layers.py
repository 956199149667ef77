"""The shape of the code, over the whole tree: api_client/ (the contract
and the client), migrations/ and celery_config.py (which the client
imports) never reach worker/, bench/, torch or a quantization library;
no import cycle; no private name imported across top-level packages.

An import is an `import` statement anywhere in a module (a lazy one inside a
function too: it runs when called) or an import string: a literal naming a
first-party module, "package.module" or "package.module:attr", as
importlib.import_module, Celery's `include=`/`-A`, the CLI's lazy command
table and pyproject's entry points take them. Without the strings a lazy
edge would pass every check unseen. Every import string must also name a
module (and attribute) that exists, so a rename cannot leave one dangling.

Registries load their own members by computed names (f"{__name__}.{name}",
pkgutil), which no static check sees; tests/test_registries.py proves those.
"""

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "llmcompressor", "gptqmodel", "bitsandbytes", "compressed_tensors", "accelerate",
         "datasets", "safetensors", "numpy")
# Where qfarm's modules live (tests/ is not part of the layering: a test may
# import anything).
PACKAGES = ("api_client", "worker", "migrations", "bench")
TOP_LEVEL_DIRS = (".", "scripts")
# The client's layer: what `pip install qfarm` runs, without the worker extra.
CLIENT = ("api_client", "migrations", "celery_config")
FORBIDDEN_TO_CLIENT = ("worker", "bench")
# Launch scripts whose `python -m X` and `celery -A X` name modules.
LAUNCHERS = ("scripts/*.sh", "bench/*.sh", "docker/*")

# The one edge from the client into the worker, and why it may stay: the
# `qfarm` console script is the composition root of both installs, and
# `qfarm worker …` is a command of it that loads worker/cli.py only when run
# (api_client/cli/commands.py's lazy table), so a client install without the worker
# extra runs every other command and never imports worker/
# (test_resolving_every_method_loads_neither_torch_nor_the_worker). Moving it
# to a second console script would split one CLI in two for users.
ALLOWED_CLIENT_EDGES = {("api_client.cli.commands", "worker.cli")}

# The one cycle, and why it may stay: Celery's own pattern. The app names its
# task modules in `include=` (a string Celery imports when the worker starts,
# after worker/app.py has finished), and each task module imports the app to
# declare its tasks on it.
ALLOWED_CYCLE_EDGES = {("worker.app", "worker.tasks")}

IMPORT_STRING = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_]\w*)?")


def module_name(path: Path) -> str:
    """The dotted name a file is imported by (a migration's name is not a
    valid identifier; Alembic loads it by path, but it is a node all the same)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "scripts":
        parts = parts[1:]
    return ".".join(parts).removesuffix(".__init__")


@cache
def sources() -> dict[str, Path]:
    """Every first-party module of the tree, by dotted name."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            out[module_name(path)] = path
    for folder in TOP_LEVEL_DIRS:
        for path in (ROOT / folder).glob("*.py"):
            out[module_name(path)] = path
    return out


def first_party(name: str) -> bool:
    top = name.split(".")[0]
    return top in PACKAGES or top in sources()


@dataclass
class Imports:
    """What one module imports: modules (first-party or not) and the import
    strings it holds, with the names it imports from first-party modules."""

    modules: set[str] = field(default_factory=set)
    strings: set[str] = field(default_factory=set)
    from_names: set[tuple[str, str]] = field(default_factory=set)


def resolve_from(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module of `from … import`, relative imports resolved."""
    base = node.module or ""
    if node.level:
        parts = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
        base = ".".join([*parts, base]) if base else ".".join(parts)
    return base


def string_literals(tree: ast.AST) -> Iterator[tuple[str, bool]]:
    """Every string constant, and whether it is the module argument of an
    import call (import_module, __import__), which counts whatever it names."""
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__"):
                called.add(id(node.args[0]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, id(node) in called


def is_import_string(text: str) -> bool:
    """`package.module` or `package.module:attr` naming a first-party module
    (a bare word is not one: "worker" is also a role and a command name)."""
    return bool(IMPORT_STRING.fullmatch(text)) and ("." in text or ":" in text) and first_party(text)


@cache
def imports_of(name: str) -> Imports:
    path = sources()[name]
    tree = ast.parse(path.read_text())
    found = Imports()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.modules |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(path, node)
            for alias in node.names:
                # `from pkg import sub` imports the module pkg.sub; `from
                # mod import name` imports mod.
                sub = f"{base}.{alias.name}"
                found.modules.add(sub if sub in sources() else base)
                if first_party(base) and sub not in sources():
                    found.from_names.add((base, alias.name))
    for text, called in string_literals(tree):
        if called or is_import_string(text):
            found.strings.add(text)
    return found


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, which qfarm supports, lacks it
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def launcher_strings() -> dict[str, set[str]]:
    """Import strings outside Python: pyproject's entry points and the modules
    launch scripts name (`python -m X`, `celery -A X`)."""
    out: dict[str, set[str]] = {}
    project = pyproject()["project"]
    for group in ("scripts", "gui-scripts"):
        out.setdefault("pyproject.toml", set()).update(project.get(group, {}).values())
    for entry_points in project.get("entry-points", {}).values():
        out["pyproject.toml"].update(entry_points.values())
    pattern = re.compile(r"(?:\s-m|\s-A)\s+(" + IMPORT_STRING.pattern + r")(?=[\s\"')\]]|$)", re.M)
    for glob in LAUNCHERS:
        for path in ROOT.glob(glob):
            if path.is_file():
                named = {m for m in pattern.findall(path.read_text(errors="replace")) if first_party(m)}
                if named:
                    out[str(path.relative_to(ROOT))] = named
    return out


def target(text: str) -> str:
    """The module an import string names (`worker.app:app` → worker.app)."""
    return text.split(":", 1)[0]


@cache
def graph() -> dict[str, set[str]]:
    """First-party module → the first-party modules it imports, by statement
    or by string."""
    known = sources()
    out = {}
    for name in known:
        imports = imports_of(name)
        edges = imports.modules | {target(s) for s in imports.strings}
        out[name] = {m for m in edges if m in known and m != name}
    return out


def top_level_names(module: str) -> set[str]:
    """The names a module binds at its top level (what `module:attr` may name)."""
    tree = ast.parse(sources()[module].read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_the_tree_covers_top_level_modules_migrations_and_bench():
    names = set(sources())
    assert {"celery_config", "migrations.env", "bench.bench", "api_client.cli", "worker.cli"} <= names
    assert {m for m in names if m.startswith("migrations.versions.0")}, "the migrations' versions are modules too"


def test_import_strings_are_edges():
    # The CLI's lazy table, Celery's include=, the launcher's `-A`: seen.
    assert "worker.cli" in graph()["api_client.cli.commands"]
    assert "worker.tasks" in graph()["worker.app"]
    assert "worker.app" in graph()["worker.launcher"]
    assert "api_client.app.client" in graph()["api_client"]


def test_every_import_string_names_a_module_and_attribute_that_exist():
    named = {f"{name}: {s}": s for name in sources() for s in imports_of(name).strings if first_party(s)}
    named |= {f"{where}: {s}": s for where, strings in launcher_strings().items() for s in strings}
    dangling = []
    for where, text in sorted(named.items()):
        module, _, attr = text.partition(":")
        if module not in sources():
            dangling.append(where)
        elif attr and attr not in top_level_names(module):
            dangling.append(f"{where} (no {attr})")
    assert dangling == []
    assert "api_client.cli:main" in launcher_strings()["pyproject.toml"]


def client_reach() -> dict[str, list[str]]:
    """Every module the client's layer reaches, with the path that reaches it,
    except through the allowed edges."""
    paths = {name: [name] for name in sources() if name.split(".")[0] in CLIENT}
    todo = list(paths)
    while todo:
        node = todo.pop()
        for nxt in sorted(graph()[node]):
            if nxt not in paths and (node, nxt) not in ALLOWED_CLIENT_EDGES:
                paths[nxt] = paths[node] + [nxt]
                todo.append(nxt)
    return paths


def test_the_client_never_imports_the_worker_or_heavy_libraries():
    bad = []
    for name, path in client_reach().items():
        if name.split(".")[0] in FORBIDDEN_TO_CLIENT:
            bad.append(" → ".join(path))
        imports = imports_of(name)
        for imported in imports.modules | imports.strings:
            if target(imported).split(".")[0] in HEAVY:
                bad.append(" → ".join([*path, imported]))
    assert bad == []


# api_client's rooms, lowest first: a module imports its own room and the
# rooms below it, never one above. The ground floor is api_client's own
# modules (config, errors, redaction, sizes) and its __init__ (whose names
# load lazily, on first use).
ROOMS = ("ground", "contract", "infra", "app", "cli")


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else "ground"


def test_api_client_has_its_rooms_and_nothing_else():
    """Every module of api_client sits in a room (a package by layer) or is
    one of the ground floor's few."""
    loose = {name for name in sources() if name.startswith("api_client.") and name.count(".") == 1
             and name.split(".")[1] not in ROOMS}
    assert loose == {"api_client.config", "api_client.errors", "api_client.redaction", "api_client.sizes"}


def test_api_client_rooms_import_only_downward():
    upward = [f"{a} ({room_of(a)}) → {b} ({room_of(b)})"
              for a, bs in graph().items() if a.startswith("api_client.")
              for b in bs if b.startswith("api_client.") and ROOMS.index(room_of(b)) > ROOMS.index(room_of(a))]
    assert upward == []


def test_the_cli_reaches_the_farm_only_through_the_application():
    """The CLI imports no database, storage or broker module: what it shows
    comes through `Client` and api_client.app.views."""
    assert [f"{a} → {b}" for a, bs in graph().items() if a.startswith("api_client.cli")
            for b in bs if b.startswith("api_client.infra")] == []


def test_the_allowed_edges_are_still_there():
    # An exception that no longer applies goes, so it cannot cover a new edge.
    assert all(b in graph()[a] for a, b in ALLOWED_CLIENT_EDGES | ALLOWED_CYCLE_EDGES)


def test_no_module_but_bench_imports_bench():
    assert [f"{a} → {b}" for a, bs in graph().items() for b in bs
            if b.split(".")[0] == "bench" and a.split(".")[0] != "bench"] == []


def test_no_import_cycle_anywhere_in_the_tree():
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph()[node]):
            if (node, nxt) in ALLOWED_CYCLE_EDGES:
                continue
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [nxt]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph()):
        if state.get(node) is None and visit(node, [node]):
            break
    assert cycle == []


def test_no_private_name_is_imported_across_top_level_packages():
    # A name with a leading underscore is its package's own business; another
    # package that needs it needs a public, documented one.
    crossing = [f"{name}: from {base} import {attr}"
                for name in sources() for base, attr in imports_of(name).from_names
                if attr.startswith("_") and base.split(".")[0] != name.split(".")[0]]
    assert crossing == []


def test_resolving_every_method_loads_neither_torch_nor_the_worker(tiny_model):
    code = f"""
import sys
from api_client.contract import catalog
from api_client.cli import cli
from api_client.app.client import Client
from api_client.contract.spec import JobSpec, resolve
for name in catalog.names():
    for fmt in catalog.get(name).formats:
        resolve(JobSpec(model={str(tiny_model)!r}, method=name, format=fmt))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} + ("worker",))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
