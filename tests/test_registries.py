"""Every registry loads every entry, and none can miss a module: the
catalog's and the evaluators' tables name every member their package
holds, and the discovered registries (storage, worker methods) find a
module dropped into their package with no other edit."""

import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from api_client.contract import catalog
from api_client.contract.catalog import base as catalog_base
from api_client.contract.catalog import methods as catalog_methods
from api_client.infra import storage
from worker import evaluators, methods

HEAVY = ("torch", "transformers", "llmcompressor", "gptqmodel", "bitsandbytes", "compressed_tensors", "accelerate",
         "datasets", "safetensors", "numpy", "boto3")


def modules_in(package) -> set[str]:
    """The modules a package's directory holds, by dotted name."""
    folder = Path(package.__file__).parent
    return {f"{package.__name__}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"}


def drop_module(tmp_path: Path, package, monkeypatch, name: str, source: str) -> str:
    """Put `name`.py in a folder added to `package`'s path, as if it had been
    written beside the others, and forget it once the test ends."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    dotted = f"{package.__name__}.{name}"
    monkeypatch.delitem(sys.modules, dotted, raising=False)
    return dotted


def test_discovery_imports_no_heavy_library():
    # The discovered registries import every module of their package: each
    # must keep its engine's or client library's import for when it runs.
    code = ("import sys; import api_client.contract.catalog, api_client.infra.storage, worker.methods, worker.evaluators; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# The catalog: an explicit table (catalog/methods.py's METHODS).

def test_the_catalog_table_lists_every_method_methods_py_declares():
    declared = {cls for cls in vars(catalog_methods).values()
                if inspect.isclass(cls) and issubclass(cls, catalog_base.MethodSpec) and cls is not catalog_base.MethodSpec}
    assert set(catalog_methods.METHODS) == declared
    assert catalog.names() == sorted(cls.name for cls in catalog_methods.METHODS)
    for cls in catalog_methods.METHODS:
        assert catalog.get(cls.name) is cls
        assert cls.formats and cls.parse_format(None) == cls.formats[0]


def test_every_catalog_method_has_one_worker_implementation_that_imports_and_is_callable():
    assert methods.implemented() == catalog.names()
    for name in catalog.names():
        fn = methods._IMPLEMENTATIONS[name]
        assert callable(fn)
        assert list(inspect.signature(fn).parameters) == ["ctx", "params", "fmt"], name


# Worker methods: discovered (every module of worker/methods/ is one).

def test_every_module_of_worker_methods_implements_a_method():
    found = {fn.__module__ for fn in methods._IMPLEMENTATIONS.values()}
    assert found == modules_in(methods)


def test_a_method_module_dropped_into_the_package_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "_IMPLEMENTATIONS", dict(methods._IMPLEMENTATIONS))
    dotted = drop_module(tmp_path, methods, monkeypatch, "dropped", """
        from worker.methods import implements

        class Dropped:
            name = "dropped"

        @implements(Dropped)
        def quantize(ctx, params, fmt):
            pass
    """)
    methods._discover()
    assert "dropped" in methods.implemented()
    assert methods._IMPLEMENTATIONS["dropped"].__module__ == dotted


# Storage: discovered (every module of api_client/infra/storage/ but base.py).

def test_every_storage_module_but_the_shared_base_registers_a_scheme():
    found = {cls.__module__ for cls in storage._SCHEMES.values()}
    assert found == modules_in(storage) - {f"{storage.__name__}.{n}" for n in storage.NOT_STORES}
    assert sorted(storage._SCHEMES) == ["file", "s3"]


def test_every_storage_scheme_constructs_a_store(tmp_path, monkeypatch):
    # S3: built, not reached (a client connects on its first request).
    monkeypatch.setenv("QFARM_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    urls = {"file": tmp_path.as_uri(), "s3": "s3://bucket/prefix"}
    assert set(urls) == set(storage._SCHEMES)
    for scheme, url in urls.items():
        store = storage.open_store(url)
        assert isinstance(store, storage.Store), scheme
        assert store.url == url


def test_a_store_module_dropped_into_the_package_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "_SCHEMES", dict(storage._SCHEMES))
    drop_module(tmp_path, storage, monkeypatch, "memory", """
        from api_client.infra.storage import register
        from api_client.infra.storage.local import LocalStore

        @register("mem")
        class MemoryStore(LocalStore):
            pass
    """)
    storage._discover()
    assert type(storage.open_store(f"mem://{tmp_path}")).__name__ == "MemoryStore"


def test_an_unknown_scheme_names_every_known_one():
    with pytest.raises(Exception, match=r"file://… or s3://…"):
        storage.open_store("ftp://host/dir")


# Evaluators: an explicit table (worker/evaluators MODULES), in figure order.

def test_the_evaluator_table_names_every_module_but_the_helpers():
    assert {f"{evaluators.__name__}.{n}" for n in (*evaluators.MODULES, *evaluators.HELPERS)} == modules_in(evaluators)
    assert not set(evaluators.MODULES) & evaluators.HELPERS


def test_every_evaluator_imports_and_registers_in_the_tables_order():
    loaded = evaluators.evaluators()
    modules = [type(e).__module__.rsplit(".", 1)[1] for e in loaded]
    assert modules == list(evaluators.MODULES)
    assert [e.name for e in loaded] == ["decode", "perplexity", "serving", "tasks"]
    for e in loaded:
        assert e.load in evaluators.LOADS, e.name
        assert callable(e.measure) and callable(e.figures)
