"""Self-test of tests/support/: each fault helper does what it says."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
import time

import psutil
import pytest

from tests.support import faults as fk

# -- utilities ---------------------------------------------------------------

def test_free_port_and_wait_port():
    port = fk.free_port()
    with pytest.raises(TimeoutError):
        fk.wait_port("127.0.0.1", port, timeout=0.3)
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", port))
        ls.listen()
        fk.wait_port("127.0.0.1", port, timeout=5)


def _alive(pids):
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_children(pid, n, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = psutil.Process(pid).children(recursive=True)
        if len(kids) >= n:
            return [k.pid for k in kids]
        time.sleep(0.05)
    raise AssertionError("children did not start")


def test_kill_tree():
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 300 & (sleep 300 & wait) & wait"])
    try:
        kids = _wait_children(proc.pid, 3)
        hit = fk.kill_tree(proc.pid, signal.SIGKILL, wait_timeout=10)
        assert proc.pid in hit and set(kids) <= set(hit)
        proc.wait(10)
        assert _alive(kids) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_process_group(tmp_path):
    with fk.ProcessGroup("sleep 300 & sleep 300 & echo ready; wait", tmp_path / "g.log") as g:
        g.wait_for_log(r"ready", timeout=30)
        members = _wait_children(g.pid, 2) + [g.pid]
        assert set(members) <= set(g.members())
        assert g.signal_group(signal.SIGTERM)
        assert g.wait(30) != 0
        deadline = time.monotonic() + 10
        while _alive(members) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _alive(members) == []
        assert "ready" in g.log_text()
    g2 = fk.ProcessGroup(["sleep", "300"], tmp_path / "g2.log").start()
    try:
        assert g2.running
    finally:
        g2.close()
    assert g2.returncode == -signal.SIGKILL


# -- Redis ---------------------------------------------------------------------

@pytest.mark.parametrize("appendonly", [True, False])
def test_redis_kill_and_start(tmp_path, appendonly):
    import redis

    with fk.PrivateRedis(tmp_path / "redis", appendonly=appendonly) as r:
        assert r.port != 6379 and r.url == f"redis://127.0.0.1:{r.port}/0"
        c = r.client(retry=None)
        c.set("k", "v")
        pid, port = r.pid, r.port
        r.kill()
        assert not r.running and not psutil.pid_exists(pid)
        with pytest.raises(redis.ConnectionError):
            c.get("k")
        r.start()
        assert r.port == port and r.pid != pid
        assert r.client().get("k") == (b"v" if appendonly else None)
        c.close()
    assert not r.running


def test_redis_client_kill_normal(tmp_path):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with fk.PrivateRedis(tmp_path / "redis", appendonly=False) as r:
        # No retries, so the error is visible; socket_timeout > the BLPOP's.
        c = redis.Redis.from_url(r.url, retry=Retry(NoBackoff(), 0), socket_timeout=60)
        assert c.ping()
        seen = []

        def consume():  # like a kombu consumer, blocked in BLPOP when the kill comes
            try:
                seen.append(c.blpop(["q"], timeout=30))
            except Exception as e:
                seen.append(e)

        t = threading.Thread(target=consume)
        t.start()
        r.wait_blocked_clients(1, timeout=30)
        assert r.client_kill_normal() >= 1
        t.join(30)
        assert len(seen) == 1 and isinstance(seen[0], redis.ConnectionError), seen
        c.rpush("q", "job")  # the same client reconnects on its next command
        assert c.blpop(["q"], timeout=5) == (b"q", b"job")
        c.close()


# -- PostgreSQL -------------------------------------------------------------------

def test_postgres_stop_start_kill(tmp_path):
    import psycopg

    with fk.PrivatePostgres(tmp_path) as pg:
        assert pg.port != 5432 and pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/qfarm"
        with psycopg.connect(pg.url, connect_timeout=3) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (42)")
        pg.stop()
        assert not pg.running
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=3)
        assert time.monotonic() - t0 < 5
        pg.start()
        with psycopg.connect(pg.url, connect_timeout=3) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(42,)]
            conn.execute("INSERT INTO t VALUES (43)")
        pg.kill()  # immediate: crash recovery on the next start keeps committed rows
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=3)
        pg.start()
        with psycopg.connect(pg.url, connect_timeout=3) as conn:
            assert conn.execute("SELECT x FROM t ORDER BY x").fetchall() == [(42,), (43,)]
        base = pg.base
    assert not pg.running
    assert pg.pid is None
    if pg._own_base:  # pragma: no cover
        assert not base.exists()


# -- a cuttable proxy ---------------------------------------------------------------

class _Echo:
    def __init__(self):
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen()
        self.port = self.ls.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(s,), daemon=True).start()

    @staticmethod
    def _echo(s):
        with s:
            try:
                while data := s.recv(65536):
                    s.sendall(data)
            except OSError:
                pass

    def close(self):
        self.ls.close()


def _roundtrip(port, payload=b"hello"):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            got += s.recv(65536)
        return got


def test_proxy_cut_restore_drop():
    echo = _Echo()
    try:
        with fk.CuttableProxy("127.0.0.1", echo.port) as p:
            big = bytes(range(256)) * 8000  # ~2 MB, more than the proxy buffers
            assert _roundtrip(p.port, big) == big
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            p.cut()
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                s.sendall(b"y")
                s.recv(1)
            s.close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", p.port), timeout=5)
            p.restore()
            assert _roundtrip(p.port) == b"hello"
            s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            p.drop_connections()
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                s.sendall(b"y")
                s.recv(1)
            s.close()
            assert _roundtrip(p.port, b"ok") == b"ok"
            assert p.errors == []
    finally:
        echo.close()


# -- S3 ---------------------------------------------------------------------------------

def test_moto_cut_and_restore(tmp_path):
    from botocore.exceptions import BotoCoreError

    with fk.MotoS3(tmp_path / "moto", cuttable=True) as s3:
        fk.make_bucket(s3.endpoint, "faults")
        client = fk.s3_client(s3.endpoint, connect_timeout=2, read_timeout=5, max_attempts=1)
        client.put_object(Bucket="faults", Key="a/one", Body=b"1")
        s3.cut()
        t0 = time.monotonic()
        with pytest.raises(BotoCoreError):
            client.get_object(Bucket="faults", Key="a/one")
        with pytest.raises(BotoCoreError):
            client.put_object(Bucket="faults", Key="a/two", Body=b"2")
        assert time.monotonic() - t0 < 5
        assert fk.list_keys(s3.direct_endpoint, "faults", "a/") == ["a/one"]  # moto itself is fine
        s3.restore()
        assert client.get_object(Bucket="faults", Key="a/one")["Body"].read() == b"1"
        assert fk.list_keys(s3.endpoint, "faults", "a/") == ["a/one"]
    assert not s3.running


# -- the safety net -------------------------------------------------------------------

_DOOMED = """
import os, sys
from tests.support import faults as fk
r = fk.PrivateRedis(sys.argv[1] + "/redis", appendonly=False).start()
g = fk.ProcessGroup("sleep 300 & echo ready; wait", sys.argv[1] + "/g.log").start()
g.wait_for_log("ready")
print(r.pid, g.pid, *g.members(), flush=True)
os.kill(os.getpid(), 9)  # no atexit, no close(): only the watchdog is left to clean up
"""


def test_watchdog_cleans_up_after_sigkill(tmp_path):
    import os
    import sys
    from pathlib import Path

    script = tmp_path / "doomed.py"
    script.write_text(_DOOMED)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == -signal.SIGKILL, out.stderr
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) >= 3, out.stdout
    deadline = time.monotonic() + 30
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _alive(pids) == []


# -- the artifact bounds of tests/test_methods.py ------------------------------------

def test_the_artifact_bounds_fail_a_garbage_artifact(tiny_model, tmp_path):
    """The same model with every projection's weights shuffled (right shapes,
    right files, wrong numbers) fails the bounds even of 4-bit artifacts,
    while the original against itself meets those of 8-bit ones."""
    import torch
    from safetensors.torch import load_file, save_file

    from tests.support.models import BOUNDS, agreement, copy_model, logits, windows

    garbage = copy_model(tiny_model, tmp_path / "garbage")
    weights = load_file(str(garbage / "model.safetensors"))
    torch.manual_seed(1)
    weights = {k: v.flatten()[torch.randperm(v.numel())].reshape(v.shape) if "proj" in k else v for k, v in weights.items()}
    save_file(weights, str(garbage / "model.safetensors"), metadata={"format": "pt"})
    tokens = windows(tiny_model)
    original = logits(tiny_model, tokens)
    same, error = agreement(original, logits(garbage, tokens))
    least_same, most_error = BOUNDS[4]
    assert same < least_same and error > most_error, (same, error)
    same, error = agreement(original, logits(tiny_model, tokens))
    assert same >= BOUNDS[8][0] and error <= BOUNDS[8][1]
