"""Fixtures: real services (PostgreSQL, Redis, moto's S3 server over HTTP) and
a tiny random Llama with a small trained tokenizer. Only fixtures and hooks
live here; what they stand on is tests/support/, which tests import directly."""

from __future__ import annotations

import fcntl
import os
import uuid
from pathlib import Path

import pytest

# One thread per process, set before anything imports torch: the parallelism
# is pytest-xdist's processes and the workers' job processes, and two threads
# each on two cores spin against each other (a GPTQ job on the tiny model
# took 22 s of CPU with two threads under load, 11 s with one). Inherited by
# every worker and job process the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No torch.compile in the tests: GPTQModel's torch kernel (the CPU worker's
# packed path) compiles its dequantization with inductor, a C++ build per
# shape and process, which doubled the CPU time of the packed loads
# (tests/test_packing.py's lossless conversions: 36 CPU-s compiled, 16 eager)
# and made it the largest share of the suite's compile work. The tests check
# what the packed path computes, which compiling does not change; a CPU
# worker outside the tests still compiles. Override with TORCHDYNAMO_DISABLE=0.
os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

from tests.support import secrets, services
from tests.support.models import build_tiny_llama
from tests.support.moto import CREDENTIALS, MotoS3

# -- secrets planted for the whole session (tests/support/secrets.py) ---------------

@pytest.fixture(scope="session", autouse=True)
def planted_secrets(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in secrets.CANARIES}
    os.environ.update(secrets.CANARIES)
    yield secrets.CANARIES
    secrets.scan_files(tmp_path_factory.getbasetemp())
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if secrets.LEAKS:
        pytest.fail("planted secrets leaked:\n" + "\n".join(sorted(set(secrets.LEAKS))[:50]), pytrace=False)


# -- services ------------------------------------------------------------------


def _service(make):
    try:
        return make()
    except services.ServiceMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def redis_url() -> str:
    """This test process's database on the machine's Redis (one per xdist worker)."""
    return _service(services.redis_url)


@pytest.fixture
def redis_conn(redis_url):
    import redis

    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """A fresh PostgreSQL database for this test process, dropped afterwards."""
    url = _service(services.create_database)
    yield url
    services.drop_database(url)


@pytest.fixture
def pg_url(pg_server_url) -> str:
    """The session's PostgreSQL database, emptied of qfarm's tables."""
    services.empty_database(pg_server_url)
    return pg_server_url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'qfarm.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")


@pytest.fixture
def migrated_db(db_url):
    from api_client.infra.db import Database

    db = Database(db_url)
    db.upgrade()
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server in its own process: boto3 talks HTTP to it."""
    with MotoS3(tmp_path_factory.mktemp("moto")) as server:
        yield server.endpoint
        secrets.scan_s3(server.endpoint)


@pytest.fixture
def aws_env(monkeypatch, s3_endpoint):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("QFARM_S3_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def bucket(aws_env) -> str:
    from api_client.infra.storage.s3 import s3_client

    name = f"qfarm-{uuid.uuid4().hex[:10]}"
    s3_client(aws_env).create_bucket(Bucket=name)
    return name


# -- a model -----------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Built once per run: parallel test processes share it (the first one
    builds it under a lock), and no test writes into it."""
    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent  # every xdist worker's basetemp sits in the run's one directory
    dest = shared / "tiny-llama"
    with open(shared / "tiny-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (dest / "model.safetensors").exists():
            build_tiny_llama(shared / "tiny-llama.partial")
            (shared / "tiny-llama.partial").rename(dest)
    return dest


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


@pytest.fixture
def local_farm(qfarm_env):
    """The settings and migrated SQLite database of qfarm_env, for tests
    that run a job in this process (runner.execute) without a worker."""
    from api_client.config import Settings
    from api_client.infra.db import Database

    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    yield settings, db
    db.dispose()


# -- hooks -------------------------------------------------------------------------

def pytest_terminal_summary(terminalreporter):
    """The fault suite's one line: faults injected, and what they cost,
    summed over the tests' reports (from every xdist worker)."""
    totals: dict[str, int] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) != "teardown":
                continue
            for name, counts in getattr(report, "user_properties", ()):
                if name == "fault suite":
                    for key, value in counts.items():
                        totals[key] = totals.get(key, 0) + value
    if totals.get("faults injected"):
        terminalreporter.write_line("fault suite: " + ", ".join(f"{k} {v}" for k, v in totals.items()))


# Modules whose tests share a costly module fixture run in one test process
# under `--dist loadgroup`; every other test is handed out on its own. (The
# xdist_group mark would say this, but pytest-xdist 3.8 loses the group on
# pytest 9.2's node ids and hands the tests out one by one: pytest-xdist#1386.)
ONE_PROCESS = {
    "tests/test_e2e.py": "one `qfarm worker start` serves the module",
    "tests/test_packing.py": "the wide model and its quantized artifacts",
    # Every pair imports llm-compressor, GPTQModel and AutoRound (~10 CPU-s
    # each on two cores): once in one process, not once in each.
    "tests/test_architectures.py": "the tiny checkpoints and the engines' imports",
}


# What the jobs run in a test process import lazily (worker/engines/).
ENGINES = ("llmcompressor.entrypoints.oneshot", "llmcompressor.modifiers.quantization", "gptqmodel", "auto_round",
           "bitsandbytes", "lm_eval.evaluator")


def pytest_collection_finish(session):
    """What collection imported (torch, transformers, every test module) and
    the engines go out of the collector's reach, as a worker's preload does
    for its job processes: the jobs run in this process then collect their
    own objects only (test_architectures.py: 209 CPU-s before, 126 after)."""
    import importlib

    from worker import preload

    for name in ENGINES:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    preload.freeze_imported()


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        """LoadScopeScheduling with a scope per test but for ONE_PROCESS's
        modules; the largest scopes (those modules) are handed out first."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_PROCESS else nodeid

    return Scheduling(config, log)


SERVICE_FIXTURES = {"redis_url", "redis_conn", "pg_server_url", "pg_url", "db_url", "migrated_db", "s3_endpoint",
                    "aws_env", "bucket", "qfarm_env"}


def pytest_collection_modifyitems(items):
    """`services`: the tests that use the machine's Redis, PostgreSQL or moto
    (`-m "not services"` runs the rest with none of them up). `gpu`: skipped
    where NVML sees no NVIDIA GPU. The `slow` tests run first: pytest-xdist
    hands tests out in this order, so the long ones do not end a run alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests:
        from worker.gpu import nvml_gpus

        if not nvml_gpus():
            for item in gpu_tests:
                item.add_marker(pytest.mark.skip(reason="needs an NVIDIA GPU"))
