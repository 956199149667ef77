"""Fixtures: real services (PostgreSQL, Redis, moto's S3 server over HTTP) and
a tiny random Llama with a small trained tokenizer, built once per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get("QFARM_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST, REDIS_PORT = "127.0.0.1", int(os.environ.get("QFARM_TEST_REDIS_PORT", "6379"))
TEST_REDIS_DB = int(os.environ.get("QFARM_TEST_REDIS_DB", "11"))


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
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_server_url) -> str:
    """The session's PostgreSQL database, emptied of qfarm's tables."""
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_server_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS job_events, jobs, job_groups, workers, farm, alembic_version CASCADE"))
    engine.dispose()
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
    proc.terminate()
    proc.wait(10)


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
    if check and out.returncode != 0:
        raise AssertionError(f"qfarm {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def run_cli(*args: str, env: dict | None = None, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `qfarm` entry point as a user would."""
    proc = subprocess.run([sys.executable, "-c", "from api_client.cli import main; main()", *args],
                          capture_output=True, text=True, env=env or os.environ.copy(), timeout=timeout)
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
