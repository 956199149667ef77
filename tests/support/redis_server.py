"""A redis-server of our own, to kill and restart (the shared one is never touched)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.cleanup import Managed, register, unregister, unwatch, watch_pid
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import die_with_parent, kill_popen, stop_popen, tail


class PrivateRedis(Managed):
    """A redis-server of our own on a free loopback port, data in ``tmpdir``.

    With ``appendonly`` every write is fsynced to the AOF (appendfsync always),
    so ``kill()`` + ``start()`` loses nothing; without it nothing is ever
    persisted (``save ""``), so the same sequence comes back empty."""

    READY_TIMEOUT = 60.0

    def __init__(self, tmpdir: str | os.PathLike, appendonly: bool, port: int | None = None,
                 redis_server: str = "/usr/bin/redis-server", extra_args: Sequence[str] = ()):
        self.dir = Path(tmpdir)
        self.appendonly = appendonly
        self.port = port or free_port()
        self.host = LOOPBACK
        self.redis_server = redis_server if os.path.exists(redis_server) else (shutil.which("redis-server") or redis_server)
        self.extra_args = list(extra_args)
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.running else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _argv(self) -> list[str]:
        argv = [self.redis_server, "--port", str(self.port), "--bind", self.host, "--dir", str(self.dir),
                "--daemonize", "no", "--save", "", "--logfile", "", "--protected-mode", "yes",
                "--appendonly", "yes" if self.appendonly else "no"]
        if self.appendonly:
            argv += ["--appendfsync", "always"]
        return argv + self.extra_args

    def start(self, timeout: float | None = None) -> PrivateRedis:
        """Start (or start again, same port and dir) and wait for PING."""
        if self.running:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(die_with_parent(self._argv()), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        register(self)
        watch_pid(f"redis-{id(self)}", self.proc.pid)
        try:
            self._wait_ready(timeout or self.READY_TIMEOUT)
        except BaseException:
            kill_popen(self.proc)
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}) on port {self.port}:\n"
                                   f"{tail(self.log_path)}")
            c = redis.Redis(self.host, self.port, socket_connect_timeout=1, socket_timeout=2,
                            retry=Retry(NoBackoff(), 0))
            try:
                if c.ping():
                    # Make sure it is *our* process answering on this port.
                    if int(c.info("server")["process_id"]) != self.proc.pid:
                        raise RuntimeError(f"port {self.port} is answered by another redis-server")
                    return
            except redis.RedisError as e:  # refused, LOADING, ...
                last = e
            finally:
                c.close()
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on {self.port} not ready after {timeout:.0f}s ({last}):\n"
                           f"{tail(self.log_path)}")

    def client(self, db: int = 0, **kwargs):
        """A redis-py client to this server (caller closes it)."""
        import redis

        kwargs.setdefault("socket_connect_timeout", 5)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(self.host, self.port, db=db, **kwargs)

    def kill(self) -> None:
        """SIGKILL the server (by pid) and reap it."""
        kill_popen(self.proc)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful SIGTERM shutdown (SIGKILL after ``timeout``)."""
        stop_popen(self.proc, timeout)

    def restart(self, hard: bool = True) -> PrivateRedis:
        """kill() (or stop() with hard=False) then start() on the same port."""
        self.kill() if hard else self.stop()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server hangs (connections stay open, nothing answers)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    def client_kill_normal(self) -> int:
        """CLIENT KILL TYPE normal: drop every normal client connection (not
        replicas/pubsub) except the one issuing it.  Returns how many.

        Note: redis-py's pool checks an idle connection before handing it out
        and silently reconnects if the server closed it, so the error is only
        seen by connections *in use* at that moment -- e.g. one blocked in
        BRPOP/BLPOP, which is where a kombu/Celery consumer sits.  Use
        ``wait_blocked_clients()`` first to make that deterministic."""
        c = self.client()
        try:
            return int(c.execute_command("CLIENT", "KILL", "TYPE", "normal"))
        finally:
            c.close()

    def wait_blocked_clients(self, n: int = 1, timeout: float = 30.0) -> int:
        """Poll INFO clients until at least ``n`` clients are blocked (BRPOP...)."""
        c = self.client()
        try:
            deadline = time.monotonic() + timeout
            while True:
                blocked = int(c.info("clients")["blocked_clients"])
                if blocked >= n:
                    return blocked
                if time.monotonic() > deadline:
                    raise TimeoutError(f"only {blocked} blocked clients after {timeout:.0f}s")
                time.sleep(0.05)
        finally:
            c.close()

    def log_text(self) -> str:
        return tail(self.log_path, 1 << 20)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            unwatch(f"redis-{id(self)}")
            unregister(self)
