"""Secrets planted for the whole test session, and the search for them in
everything the suite wrote (issue 18: "a planted secret appears in no row,
manifest, event, log line or CLI output after the whole suite").

tests/conftest.py puts CANARIES into the environment before the first test,
so every process the suite starts (CLI runs, workers, job processes) holds
them as a farm's processes hold their credentials. What the tests write is
searched as it goes: every PostgreSQL database before it is emptied or
dropped (services), every CLI run's output (cli), the small objects of
moto's S3 server, and, at the session's end, every regular file under
pytest's temporary directory (SQLite databases, file:// stores with their
manifests, worker logs). Found anywhere: the session fails.

The values come from one seed in the environment: pytest-xdist's processes
and the controller plant and look for the same ones.
"""

from __future__ import annotations

import hashlib
import os
import stat
import uuid
from pathlib import Path

_SEED = os.environ.setdefault("QFARM_TEST_CANARY_SEED", uuid.uuid4().hex)


def _canary(name: str, n: int = 32) -> str:
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
# What this process found (each xdist process fails its own session).
LEAKS: list[str] = []


def leaked_names(data: bytes | str) -> list[str]:
    """Which planted secrets `data` holds."""
    blob = data.encode(errors="replace") if isinstance(data, str) else data
    return [name for name, value in _PLANTED.items() if value.encode() in blob]


def check_output(where: str, *texts: str | None) -> None:
    for text in texts:
        for name in leaked_names(text or ""):
            LEAKS.append(f"{name} in {where}")


def scan_files(root: Path, max_bytes: int = 32 * 2**20) -> None:
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


def scan_pg(url: str) -> None:
    """Every row of every table of the database's public schema."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT t::text FROM "{table}" t'):
                check_output(f"PostgreSQL table {table}", row)


def scan_s3(endpoint: str, max_bytes: int = 2**20) -> None:
    """Every small object left in moto (manifests, configs, uploaded inputs)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    for bucket in s3.list_buckets().get("Buckets", []):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"]):
            for obj in page.get("Contents", []):
                if obj["Size"] <= max_bytes:
                    body = s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
                    check_output(f"s3://{bucket['Name']}/{obj['Key']}", body.decode("latin-1"))
