"""S3 for the tests: moto's server in its own process, spoken to over HTTP.

    with MotoS3(tmp_path / "moto") as s3:            # the suite's S3 (conftest)
        make_bucket(s3.endpoint, "b")
    with MotoS3(tmp_path / "moto", cuttable=True) as s3:
        s3.cut(); ...; s3.restore()                 # a network fault between client and S3

moto keeps everything in memory, so a restart would lose the data: S3 faults
are network faults, made by a CuttableProxy in front of the server.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.cleanup import Managed, register, unregister, unwatch, watch_pid
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import die_with_parent, kill_popen, tail
from tests.support.proxy import CuttableProxy

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class MotoS3(Managed):
    """moto's S3 server on a free port, its log in ``tmpdir``. With
    ``cuttable`` it is reached through a CuttableProxy: ``endpoint`` goes
    through the proxy, ``direct_endpoint`` does not."""

    READY_TIMEOUT = 90.0

    def __init__(self, tmpdir: str | os.PathLike, cuttable: bool = False):
        self.dir = Path(tmpdir)
        self.host = LOOPBACK
        self.port = free_port()
        self.proxy = CuttableProxy(self.host, self.port) if cuttable else None
        self.log_path = self.dir / "moto.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def direct_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.proxy.host}:{self.proxy.port}" if self.proxy else self.direct_endpoint

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> MotoS3:
        if not self.running:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
            self.proc = subprocess.Popen(die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env={**os.environ, **CREDENTIALS}, cwd=self.dir)
            register(self)
            watch_pid(f"moto-{id(self)}", self.proc.pid)
            try:
                self._wait_ready(timeout or self.READY_TIMEOUT)
            except BaseException:
                kill_popen(self.proc)
                raise
        if self.proxy:
            self.proxy.start()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({self.proc.returncode}):\n{tail(self.log_path)}")
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=5)
                try:
                    c.request("GET", "/")
                    if c.getresponse().status == 200:
                        return
                finally:
                    c.close()
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"moto server not ready after {timeout:.0f}s ({last}):\n{tail(self.log_path)}")

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def drop_connections(self) -> None:
        self.proxy.drop_connections()

    def log_text(self) -> str:
        return tail(self.log_path, 1 << 20)

    def close(self) -> None:
        try:
            if self.proxy:
                self.proxy.close()
        finally:
            kill_popen(self.proc)
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            unwatch(f"moto-{id(self)}")
            unregister(self)


def s3_client(endpoint: str, connect_timeout: float = 5, read_timeout: float = 30, max_attempts: int = 3):
    """A boto3 S3 client for moto: path-style, us-east-1, test credentials."""
    import boto3
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": "path"}, region_name="us-east-1", connect_timeout=connect_timeout,
                 read_timeout=read_timeout, retries={"max_attempts": max_attempts, "mode": "standard"})
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1", config=cfg)


def make_bucket(endpoint: str, name: str) -> str:
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """All keys under ``prefix``, sorted (follows pagination)."""
    keys: list[str] = []
    for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)
