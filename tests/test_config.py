"""One typed configuration (issue 20): every QFARM_* variable is declared once
in api_client/config.py and read nowhere else; `qfarm config` shows them,
secrets masked; docs/operations.md lists them; Celery's settings are a function of
them. Fast: no services, no workers."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from api_client import config
from api_client.config import Settings
from tests.support.cli import invoke
from tests.support.secrets import CANARIES

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PY = ROOT / "api_client" / "config.py"
DECLARED = {v.name for v in config.VARIABLES}


def _python_files() -> list[Path]:
    files = [*ROOT.glob("api_client/**/*.py"), *ROOT.glob("worker/**/*.py"), *ROOT.glob("migrations/**/*.py"),
             *ROOT.glob("scripts/*.py"), ROOT / "celery_config.py"]
    return sorted(files)


# -- (a) the environment is read for QFARM_* only in config.py ----------------------

def _is_getter(func: ast.AST) -> bool:
    """`os.environ.get`, `environ.setdefault`, `os.getenv` or a bare `getenv`."""
    if isinstance(func, ast.Attribute):
        return (func.attr in ("get", "setdefault") and _is_environ(func.value)) or func.attr == "getenv"
    return isinstance(func, ast.Name) and func.id == "getenv"


def _is_environ(node: ast.AST) -> bool:
    """`os.environ` or a bare `environ` (from os import environ)."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (isinstance(node, ast.Name) and node.id == "environ")


def _names_qfarm(key: ast.AST, constants: dict[str, str]) -> bool:
    """Whether a key names a QFARM_* variable: a literal, an f-string that
    starts with one, a module constant holding one, or a declaration's
    `.name` (config.GPU_INDEX.name)."""
    if isinstance(key, ast.Constant) and isinstance(key.value, str):
        return key.value.startswith("QFARM_")
    if isinstance(key, ast.JoinedStr) and key.values:
        first = key.values[0]
        return isinstance(first, ast.Constant) and str(first.value).startswith("QFARM_")
    if isinstance(key, ast.Name):
        return constants.get(key.id, "").startswith("QFARM_")
    return isinstance(key, ast.Attribute) and key.attr == "name"


def qfarm_reads(source: str) -> list[int]:
    """The lines of `source` that read a QFARM_* variable from the
    environment: os.environ.get/setdefault, os.getenv, os.environ[...] and
    `in os.environ`."""
    tree = ast.parse(source)
    constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                 for t in n.targets if isinstance(t, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        key: ast.AST | None = None
        if isinstance(node, ast.Call) and node.args and _is_getter(node.func):
            key = node.args[0]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _is_environ(node.value):
            key = node.slice
        elif isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                and any(_is_environ(c) for c in node.comparators):
            key = node.left
        if key is not None and _names_qfarm(key, constants):
            lines.append(node.lineno)
    return lines


def test_the_read_finder_finds_every_kind_of_read():
    """The tree test below is only as good as this finder: each form of read
    is found, and a write, a copy or another variable is not."""
    source = "\n".join([
        "import os",
        "from os import environ, getenv",
        "NAME = 'QFARM_THING'",
        "a = os.environ.get('QFARM_A')",
        "b = os.getenv('QFARM_B', '')",
        "c = os.environ['QFARM_C']",
        "d = 'QFARM_D' in os.environ",
        "e = environ.get(NAME)",
        "f = getenv(f'QFARM_{x}')",
        "g = os.environ.get(config.PRELOAD.name)",
        "os.environ['QFARM_W'] = '1'",
        "env = {**os.environ, 'QFARM_PRELOAD': '0'}",
        "h = os.environ.get('HF_TOKEN')",
    ])
    assert qfarm_reads(source) == [4, 5, 6, 7, 8, 9, 10]


def test_only_config_reads_qfarm_variables():
    files = _python_files()
    assert CONFIG_PY in files and ROOT / "worker" / "gpu.py" in files
    found = [f"{path.relative_to(ROOT)}:{line}" for path in files if path != CONFIG_PY
             for line in qfarm_reads(path.read_text())]
    assert found == [], "QFARM_* read outside api_client/config.py (take it from Settings): " + ", ".join(found)


# -- (b) every QFARM_* name mentioned is declared -----------------------------------

_MENTION = re.compile(r"(?<![A-Za-z0-9_])QFARM_[A-Z0-9_]*[A-Z0-9]")


def _compose_variables() -> set[str]:
    """What docker/compose.yml substitutes (${QFARM_BIND:-…}): Compose's
    variables, which docs/operations.md names and qfarm never reads."""
    return set(re.findall(r"\$\{(QFARM_[A-Z0-9_]+)", (ROOT / "docker" / "compose.yml").read_text()))


def test_every_qfarm_name_mentioned_is_declared():
    allowed = DECLARED | _compose_variables()
    texts = {p: p.read_text() for p in [*ROOT.glob("api_client/**/*.py"), *ROOT.glob("worker/**/*.py"), ROOT / "README.md", *ROOT.glob("docs/*.md")]}
    undeclared = sorted({f"{name} ({path.relative_to(ROOT)})" for path, text in texts.items()
                         for name in _MENTION.findall(text) if name not in allowed and not name.startswith("QFARM_TEST_")})
    assert undeclared == [], "declare these in api_client/config.py (or name them QFARM_TEST_*): " + ", ".join(undeclared)


def _configuration_table() -> str:
    """docs/operations.md's configuration table (the README's contents point there)."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    section = doc.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_the_configuration_table_lists_every_declared_variable():
    table = _configuration_table()
    missing = [name for name in sorted(DECLARED) if f"`{name}`" not in table]
    assert missing == [], f"add to docs/operations.md's configuration table: {', '.join(missing)}"


def test_declarations_have_help_and_the_urls_are_secret():
    assert all(v.help and "\n" not in v.help for v in config.VARIABLES)
    secret = {v.name for v in config.VARIABLES if v.secret}
    assert {"QFARM_BROKER_URL", "QFARM_DATABASE_URL", "QFARM_STORAGE_URL"} <= secret
    # A token file's path is no secret; its content is never read for display.
    assert "QFARM_HF_TOKEN_FILE" not in secret
    assert {f.name for f in dataclasses.fields(Settings)} == {v.field for v in config.VARIABLES}


# -- Settings ------------------------------------------------------------------------

@pytest.fixture
def home(monkeypatch, tmp_path) -> Path:
    """Every declared variable unset but QFARM_HOME and QFARM_USER."""
    for name in DECLARED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("QFARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QFARM_USER", "tester")
    return tmp_path / "home"


def test_settings_are_read_at_each_call_with_defaults_under_home(home, monkeypatch):
    s = Settings.from_env()
    assert (s.home, s.scratch_dir, s.model_cache_dir) == (home, home / "scratch", home / "model-cache")
    assert s.database_url == f"sqlite:///{home / 'qfarm.db'}" and s.storage_url == (home / "artifacts").as_uri()
    assert (s.max_attempts, s.job_time_limit_s, s.preload, s.allow_remote_code, s.queues) == (3, 43200, True, False, ())
    assert s.job_memory_limit == config.JobMemory("80%", share=0.8)
    monkeypatch.setenv("QFARM_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("QFARM_GPU_INDEX", "cpu")
    monkeypatch.setenv("QFARM_QUEUES", "qfarm.a,qfarm.b")
    monkeypatch.setenv("QFARM_JOB_MEMORY_LIMIT", "24GiB")
    s = Settings.from_env()
    assert (s.max_attempts, s.gpu_index, s.queues) == (7, "cpu", ("qfarm.a", "qfarm.b"))
    assert s.job_memory_limit == config.JobMemory("24GiB", bytes=24 * 2**30)


def test_the_single_value_helpers_keep_their_meaning(home, monkeypatch):
    assert config.qfarm_home() == home and config.input_prefixes() is None
    assert config.max_text_bytes() == config.DEFAULT_MAX_TEXT_BYTES
    monkeypatch.setenv("QFARM_INPUT_PREFIXES", "s3://farm/models/, s3://shared/llama")
    assert config.input_prefixes() == ["s3://farm/models/", "s3://shared/llama"]
    monkeypatch.setenv("QFARM_INPUT_PREFIXES", "s3://farm/models/,/local")
    with pytest.raises(config.QFarmError, match=r"^QFARM_INPUT_PREFIXES holds '/local': give s3:// prefixes, comma-separated$"):
        config.input_prefixes()
    # The CLI's last-resort handler reads QFARM_DEBUG alone: it never fails.
    monkeypatch.setenv("QFARM_DEBUG", "please")
    monkeypatch.setenv("QFARM_MAX_ATTEMPTS", "many")
    assert config.debug() is True


# -- (c), (d) `qfarm config` --------------------------------------------------------

def test_qfarm_config_masks_the_database_password_and_says_where_each_value_came_from(home):
    url = "postgresql://qf:hunter2@127.0.0.1:1/qfarm"
    proc = invoke("config", env={**os.environ, "QFARM_DATABASE_URL": url}, check=True)
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()}
    assert rows["VARIABLE"] == ["VARIABLE", "VALUE", "SOURCE"]
    assert set(rows) - {"VARIABLE"} == DECLARED
    assert rows["QFARM_DATABASE_URL"] == ["QFARM_DATABASE_URL", "postgresql://***@127.0.0.1:1/qfarm", "environment"]
    assert rows["QFARM_SCRATCH_DIR"] == ["QFARM_SCRATCH_DIR", str(home / "scratch"), "default"]
    assert rows["QFARM_USER"][1:] == ["tester", "environment"]
    assert "hunter2" not in proc.stdout + proc.stderr

    data = json.loads(invoke("config", "--json", env={**os.environ, "QFARM_DATABASE_URL": url}, check=True).stdout)
    assert data["QFARM_DATABASE_URL"] == {"value": "postgresql://***@127.0.0.1:1/qfarm", "source": "environment",
                                          "secret": True, "help": config.DATABASE_URL.help}
    assert data["QFARM_MAX_ATTEMPTS"]["value"] == 3 and data["QFARM_MAX_ATTEMPTS"]["source"] == "default"
    assert data["QFARM_S3_ENDPOINT_URL"]["value"] is None

    # The session's planted password (tests/support/cli.py's `invoke`
    # searches every output for it as well).
    planted = CANARIES["QFARM_CANARY_DATABASE_URL"]
    proc = invoke("config", env={**os.environ, "QFARM_DATABASE_URL": planted, "QFARM_BROKER_URL": planted}, check=True)
    assert CANARIES["QFARM_CANARY_DB_PASSWORD"] not in proc.stdout and proc.stdout.count("***@127.0.0.1:1/qfarm") == 2


@pytest.mark.parametrize("name,value,message", [
    ("QFARM_MAX_ATTEMPTS", "three", "QFARM_MAX_ATTEMPTS must be a whole number, not 'three'"),
    ("QFARM_HEARTBEAT_TIMEOUT", "1", "QFARM_HEARTBEAT_TIMEOUT must be at least 2, not 1"),
    ("QFARM_JOB_MEMORY_LIMIT", "150%", "QFARM_JOB_MEMORY_LIMIT must be a share of memory (1% to 100%) or a size, not '150%'"),
    ("QFARM_JOB_MEMORY_LIMIT", "lots", "QFARM_JOB_MEMORY_LIMIT must be a share of memory (80%) or a size (24GiB), not 'lots'"),
    ("QFARM_PRELOAD", "maybe", "QFARM_PRELOAD must be 1 or 0 (true/false, yes/no, on/off), not 'maybe'"),
    ("QFARM_GPU_INDEX", "first", "QFARM_GPU_INDEX must be a GPU index or cpu, not 'first'"),
    ("QFARM_USER", "a b", "QFARM_USER must be 1 to 128 printable characters without spaces, not 'a b'"),
])
def test_a_malformed_value_is_one_line(home, monkeypatch, name, value, message):
    proc = invoke("config", env={**os.environ, name: value})
    assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"error: {message}\n")
    # The same words wherever the value is first needed.
    monkeypatch.setenv(name, value)
    with pytest.raises(config.QFarmError, match=f"^{re.escape(message)}$"):
        Settings.from_env()


# -- (e) Celery's settings ---------------------------------------------------------

def test_celery_settings_derive_the_time_limits_from_the_job_time_limit(home, monkeypatch):
    from celery_config import celery_settings

    monkeypatch.setenv("QFARM_JOB_TIME_LIMIT", "100")
    settings = Settings.from_env()
    conf = celery_settings(settings)
    assert conf["broker_transport_options"] == {"visibility_timeout": 100 + 3600, "priority_steps": [0, 3, 6, 9]}
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (100, 700)
    assert celery_settings(dataclasses.replace(settings, job_time_limit_s=12 * 3600))["broker_transport_options"][
        "visibility_timeout"] == 12 * 3600 + 3600
    # The client's sending app carries them too (api_client/infra/queue.py).
    from api_client.infra import queue

    app = queue.app("redis://127.0.0.1:1/15")  # never connected to
    assert app.conf.broker_transport_options["visibility_timeout"] == 3700 and app.conf.task_acks_late


def test_celery_config_imports_only_config_of_api_client():
    tree = ast.parse((ROOT / "celery_config.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m and m.startswith("api_client")} == {"api_client.config"}
