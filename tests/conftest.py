"""Fixtures: real services (PostgreSQL, Redis, moto's S3 server over HTTP) and
a tiny random Llama with a small trained tokenizer, built once per session."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("QFARM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("QFARM_TEST_REDIS_PORT", "6379"))
TEST_REDIS_DB = int(os.environ.get("QFARM_TEST_REDIS_DB", "11"))


# -- secrets planted for the whole session -------------------------------------------
# Put in this process's environment before the first test, so every process
# the suite starts (CLI runs, workers) holds them as a farm's processes hold
# their credentials; the session ends by looking for them in everything the
# suite wrote: the rows of every PostgreSQL database before it is emptied,
# the files under pytest's temporary directory (SQLite databases, file://
# stores with their manifests, worker logs), the small objects of moto's S3
# server, and every CLI run's output. Found anywhere: the session fails.
# Test modules import this file again as `tests.conftest` (pytest loaded it
# as `conftest`): the values come from one seed in the environment, so both
# copies plant and look for the same ones.
_SEED = os.environ.setdefault("QFARM_TEST_CANARY_SEED", uuid.uuid4().hex)


def _canary(name: str, n: int = 32) -> str:
    import hashlib

    return hashlib.sha256(f"{_SEED}:{name}".encode()).hexdigest()[:n]


_DB_PASSWORD = f"canary-pw-{_canary('pw', 16)}"
CANARIES = {
    "QFARM_CANARY_SECRET": f"canary-secret-{_canary('secret')}",
    "QFARM_CANARY_DB_PASSWORD": _DB_PASSWORD,
    "QFARM_CANARY_DATABASE_URL": f"postgresql://qfarm:{_DB_PASSWORD}@127.0.0.1:1/qfarm",
    "QFARM_CANARY_AWS_SECRET_ACCESS_KEY": _canary("aws", 40),
    "QFARM_CANARY_HF_TOKEN": "hf_" + _canary("hf", 34),
}
# The values to look for (the URL's secret part is its password).
_PLANTED = {k: v for k, v in CANARIES.items() if k != "QFARM_CANARY_DATABASE_URL"}
LEAKS: list[str] = []


def leaked_names(data: bytes | str) -> list[str]:
    """Which planted secrets `data` holds."""
    blob = data.encode(errors="replace") if isinstance(data, str) else data
    return [name for name, value in _PLANTED.items() if value.encode() in blob]


def check_output(where: str, *texts: str) -> None:
    for text in texts:
        for name in leaked_names(text or ""):
            LEAKS.append(f"{name} in {where}")


def _scan_files(root: Path, max_bytes: int = 32 * 2**20) -> None:
    """Regular files only, following no link (a test's link to
    /proc/self/environ is the attack, not a leak)."""
    for base, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(base, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
                    continue
                with open(path, "rb") as f:
                    check_output(path, f.read().decode("latin-1"))
            except OSError:
                continue


def _scan_pg(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                check_output(f"PostgreSQL table {table}", row)


def drop_qfarm_tables(url: str) -> None:
    """Empty a PostgreSQL database of qfarm's tables, once what the tests
    before wrote was searched for the planted secrets."""
    from sqlalchemy import create_engine, text

    _scan_pg(url)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS publications, job_events, jobs, job_groups, workers, farm, alembic_version CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def planted_secrets(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in CANARIES}
    os.environ.update(CANARIES)
    yield CANARIES
    _scan_files(tmp_path_factory.getbasetemp())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    # What the copy imported as `tests.conftest` found, too.
    found = {leak for module in ("conftest", "tests.conftest") for leak in getattr(sys.modules.get(module), "LEAKS", [])}
    if found:
        pytest.fail("planted secrets leaked:\n" + "\n".join(sorted(found)[:50]), pytrace=False)


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- services ------------------------------------------------------------------

@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open(REDIS_HOST, REDIS_PORT):
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    import redis

    redis.Redis(REDIS_HOST, REDIS_PORT, db=TEST_REDIS_DB).flushdb()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_REDIS_DB}"


@pytest.fixture
def redis_conn(redis_url):
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    if not _port_open("127.0.0.1", 5432):
        pytest.fail("PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)")
    import psycopg

    name = f"qfarm_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    _scan_pg(f"{base}/{name}")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server_url) -> str:
    """The session's PostgreSQL database, emptied of qfarm's tables."""
    drop_qfarm_tables(pg_server_url)
    return pg_server_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'qfarm.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


@pytest.fixture
def migrated_db(db_url):
    from api_client.db import Database

    db = Database(db_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server in its own process: boto3 talks HTTP to it."""
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while not _port_open("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("moto's S3 server did not start")
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    _scan_s3(f"http://127.0.0.1:{port}")
    proc.terminate()
    proc.wait(10)


def _scan_s3(endpoint: str, max_bytes: int = 2**20) -> None:
    """Every small object the session left in moto (manifests, configs,
    uploaded inputs)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    for bucket in s3.list_buckets().get("Buckets", []):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                if obj["Size"] <= max_bytes:
                    body = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                    check_output(f"s3://{bucket['Name']}/{obj['Key']}", body.decode("latin-1"))


@pytest.fixture
def aws_env(monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("QFARM_S3_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def bucket(aws_env) -> str:
    from api_client.storage.s3 import s3_client

    name = f"qfarm-{uuid.uuid4().hex[:10]}"
    s3_client(aws_env).create_bucket(Bucket=name)
    return name


# -- a model -----------------------------------------------------------------------

def build_tiny_llama(dest: Path, hidden: int = 128, layers: int = 2, intermediate: int = 256) -> Path:
    """A random Llama with a small byte-level BPE tokenizer trained on the
    built-in calibration text: real shapes, real files, seconds to build."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from worker.texts import builtin_text

    dest.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([builtin_text("calib")[:200_000]], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(dest)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.float16).save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


# -- settings ----------------------------------------------------------------------

@pytest.fixture
def qfarm_env(monkeypatch, tmp_path, redis_url):
    """QFARM_* variables pointing at a private home, SQLite and the test Redis."""
    home = tmp_path / "qfarm-home"
    monkeypatch.setenv("QFARM_HOME", str(home))
    monkeypatch.setenv("QFARM_BROKER_URL", redis_url)
    monkeypatch.setenv("QFARM_DATABASE_URL", f"sqlite:///{home / 'qfarm.db'}")
    monkeypatch.setenv("QFARM_STORAGE_URL", (home / "artifacts").as_uri())
    monkeypatch.setenv("QFARM_USER", "tester")
    monkeypatch.delenv("QFARM_S3_ENDPOINT_URL", raising=False)
    return home


def invoke(*args: str, env: dict | None = None, check: bool = False):
    """Run `qfarm ARGS` in this process with Click's CliRunner: what a user
    sees (stdout, stderr, exit status) without a subprocess's start-up.
    `env` is the whole environment the command should see."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from api_client.cli import cli

    overrides = {k: v for k, v in (env or {}).items() if os.environ.get(k) != v}
    overrides.update({k: None for k in os.environ if env is not None and k not in env})
    result = CliRunner().invoke(cli, list(args), env=overrides, catch_exceptions=False)
    out = SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)
    check_output(f"the output of qfarm {' '.join(args)[:80]}", out.stdout, out.stderr)
    if check and out.returncode != 0:
        raise AssertionError(f"qfarm {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `qfarm` entry point as a user would."""
    proc = subprocess.run([sys.executable, "-c", "from api_client.cli import main; main()", *args],
                          capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout)
    check_output(f"the output of qfarm {' '.join(args)[:80]}", proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"qfarm {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def pytest_terminal_summary(terminalreporter):
    """The fault suite's one line: faults injected, and what they cost."""
    faults = sys.modules.get("test_faults") or sys.modules.get("tests.test_faults")
    report = getattr(faults, "REPORT", None)
    if report and report["faults injected"]:
        terminalreporter.write_line("fault suite: " + ", ".join(f"{k} {v}" for k, v in report.items()))


SERVICE_FIXTURES = {"redis_url", "redis_conn", "pg_server_url", "pg_url", "db_url", "migrated_db", "s3_endpoint",
                    "aws_env", "bucket", "qfarm_env"}


def pytest_collection_modifyitems(items):
    """`services`: the tests that use the machine's Redis, PostgreSQL or moto
    (`-m "not services"` runs the rest with none of them up)."""
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
