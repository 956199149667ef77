"""Fault injection for tests: private, killable copies of the services qfarm
talks to, and a TCP proxy that can cut the network to any of them.

Every helper starts its OWN process on a free loopback port and only ever
signals processes it started itself, by pid (or by the process group it made).
The shared Redis on :6379 and PostgreSQL on :5432 are never touched.

    with PrivateRedis(tmp_path / "redis", appendonly=True) as r:
        ...; r.kill(); r.start()          # same port, same dir, AOF replayed

    with PrivatePostgres(tmp_path / "pg") as pg:
        ...; pg.stop(); pg.start()        # data kept; pg.kill() = immediate stop

    with MotoS3() as s3:
        make_bucket(s3.endpoint, "b")
        s3.cut(); ...; s3.restore()       # network fault between client and S3

    with CuttableProxy("127.0.0.1", upstream_port) as p:
        p.cut(); p.restore(); p.drop_connections()

    with ProcessGroup([...], tmp_path / "worker.log") as g:
        g.wait_for_log("ready"); g.signal_group(signal.SIGTERM); g.wait(30)

Nothing here is a pytest fixture; objects are context managers and ``close()``
always cleans up (and is idempotent).  An ``atexit`` hook closes whatever is
still open when the interpreter exits, and processes started directly from the
main thread get ``PR_SET_PDEATHSIG=SIGKILL`` (via setpriv) so they die with the
test process even if it is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import http.client
import os
import queue
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"

__all__ = [
    "LOOPBACK", "free_port", "wait_port", "port_open", "kill_tree", "ProcessGroup",
    "PrivateRedis", "PrivatePostgres", "CuttableProxy", "MotoS3",
    "s3_client", "make_bucket", "list_keys", "close_all",
]


# -- registry: everything started is closed at exit ----------------------------

_LIVE: dict[int, object] = {}
_LIVE_LOCK = threading.Lock()


def _register(obj) -> None:
    with _LIVE_LOCK:
        _LIVE[id(obj)] = obj


def _unregister(obj) -> None:
    with _LIVE_LOCK:
        _LIVE.pop(id(obj), None)


def close_all() -> None:
    """Close every helper that is still open (the atexit safety net)."""
    with _LIVE_LOCK:
        objs = list(_LIVE.values())
    for obj in reversed(objs):
        with contextlib.suppress(Exception):
            obj.close()


atexit.register(close_all)


# -- watchdog: cleanup even if the test process is SIGKILLed ---------------------
#
# A small helper process (own session, so a Ctrl-C to pytest's group does not
# kill it first) reads "add"/"del" lines on a pipe.  When the pipe hits EOF --
# we exited, or were killed -- it cleans up whatever is still registered:
# a pid (only if its create time still matches), a process group (only if
# its leader's pid was not reused), a postgres data dir (pg_ctl stop -m
# immediate on exactly that dir), a temp dir we made.  close() unregisters,
# so after a normal run there is nothing left for it to do.

_WATCHDOG_SRC = r"""
import os, signal, subprocess, shutil, sys
entries = {}
for line in sys.stdin:
    parts = line.rstrip("\n").split("\t")
    if parts[0] == "add":
        entries[parts[1]] = parts[2:]
    elif parts[0] == "del":
        entries.pop(parts[1], None)
if entries:
    import psutil
def same(pid, ctime):
    try:
        return abs(psutil.Process(pid).create_time() - ctime) < 0.05
    except psutil.NoSuchProcess:
        return None
# newest first; directories last, after the servers that use them are stopped
for args in sorted(reversed(list(entries.values())), key=lambda a: a[0] == "rmtree"):
    try:
        kind = args[0]
        if kind == "pid":
            pid, ctime = int(args[1]), float(args[2])
            if same(pid, ctime):
                os.kill(pid, signal.SIGKILL)
        elif kind == "pgrp":
            pgid, ctime = int(args[1]), float(args[2])
            if same(pgid, ctime) is not False:
                os.killpg(pgid, signal.SIGKILL)
        elif kind == "pg":
            pre = ["runuser", "-u", args[3], "--"] if args[3] else []
            subprocess.run(pre + [args[1], "stop", "-w", "-t", "60", "-m", "immediate", "-D", args[2]],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=120, cwd="/")
        elif kind == "rmtree":
            shutil.rmtree(args[1], ignore_errors=True)
    except Exception:
        pass
"""

_WD: subprocess.Popen | None = None
_WD_LOCK = threading.Lock()


def _watch(key: str, *args) -> None:
    """Tell the watchdog to clean ``args`` up if we die; ``key`` names the entry."""
    global _WD
    line = "\t".join(["add", key, *map(str, args)]) + "\n"
    with _WD_LOCK:
        try:
            if _WD is None or _WD.poll() is not None:
                _WD = subprocess.Popen([sys.executable, "-c", _WATCHDOG_SRC], stdin=subprocess.PIPE,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True, cwd="/", text=True)
            _WD.stdin.write(line)
            _WD.stdin.flush()
        except OSError:
            pass  # best effort: atexit and close() still clean up


def _unwatch(key: str) -> None:
    with _WD_LOCK:
        if _WD is not None and _WD.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                _WD.stdin.write(f"del\t{key}\n")
                _WD.stdin.flush()


def _watch_pid(key: str, pid: int, kind: str = "pid") -> None:
    try:
        ctime = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return
    _watch(key, kind, pid, ctime)


class _Managed:
    """start() on enter (unless already running), close() on exit."""

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def running(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


# -- ports and processes ---------------------------------------------------------

def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_port(host: str, port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll until something accepts TCP connections on host:port.

    Raises TimeoutError after ``timeout`` s, or RuntimeError at once if
    ``proc`` (the process that should be listening) has exited."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited ({proc.returncode}) before listening on {host}:{port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.05)


def kill_tree(pid: int, sig: int = signal.SIGKILL, include_parent: bool = True,
              wait_timeout: float | None = None) -> list[int]:
    """Send ``sig`` to process ``pid`` and all its descendants (by pid only).

    The tree is read before anything is signalled, the parent is signalled
    first (so it cannot respawn children), then the descendants.  Returns the
    pids signalled; with ``wait_timeout`` waits that long for them to exit."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    try:
        procs = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    if include_parent:
        procs.insert(0, parent)
    hit = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            p.send_signal(sig)
            hit.append(p)
    if wait_timeout is not None and hit:
        _wait_dead(hit, wait_timeout)
    return [p.pid for p in hit]


def _wait_dead(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until each process is gone or a zombie (dead, just not yet reaped
    by whoever adopted it); returns those still alive after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = list(procs)
    while left:
        still = []
        for p in left:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
            except psutil.NoSuchProcess:
                pass
        left = still
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    return left


def _die_with_parent(cmd: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig KILL`` (PR_SET_PDEATHSIG follows the forking
    *thread*, so only from the main thread)."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    return cmd


def _tail(path: Path | None, n: int = 4000) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop_popen(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM (SIGCONT first, in case it was paused), wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(30)


def _kill_popen(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(30)


class ProcessGroup(_Managed):
    """A command in its own session/process group, output to ``log_path``.

    ``cmd`` is an argv list, or a string run by ``/bin/sh -c``."""

    def __init__(self, cmd: Sequence[str] | str, log_path: str | os.PathLike, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, die_with_parent: bool = True):
        self.cmd = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self) -> ProcessGroup:
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")
        argv = _die_with_parent(self.cmd) if self.die_with_parent else self.cmd
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        _register(self)
        _watch_pid(f"pgrp-{id(self)}", self.proc.pid, "pgrp")
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def pgid(self) -> int | None:
        # start_new_session: the leader's pid is the group's id.  Linux never
        # hands out a pid still in use as a pgid, so this stays ours while any
        # member lives.
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def members(self) -> list[int]:
        """Pids of the live processes in the group (leader included)."""
        if self.proc is None:
            return []
        out = []
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.pid)
        return out

    def signal(self, sig: int) -> None:
        """Signal the leader only."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def signal_group(self, sig: int) -> bool:
        """Signal every process in the group; False if the group is gone."""
        if self.proc is None:
            return False
        if self.proc.poll() is not None and psutil.pid_exists(self.pgid):
            # Our leader is dead and reaped, yet a process has its pid: the pid
            # was reused, so our group must have been empty.  Not ours to signal.
            return False
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def kill_group(self, timeout: float = 30.0) -> int | None:
        """SIGKILL the whole group and reap the leader."""
        if self.proc is None:
            return None
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return self.proc.poll()

    def terminate_group(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the group, wait for the leader, then SIGKILL what is left."""
        if self.proc is None:
            return None
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the leader; raises subprocess.TimeoutExpired."""
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        if self._log is not None:
            with contextlib.suppress(ValueError, OSError):
                self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match:
        """Poll the log until regex ``pattern`` matches; fails fast if the leader exits."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text())
            if m:
                return m
            if not self.running:
                m = rx.search(self.log_text())
                if m:
                    return m
                raise RuntimeError(f"process exited ({self.returncode}) before log matched {pattern!r}:\n"
                                   f"{self.log_text()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"log did not match {pattern!r} in {timeout:.0f}s:\n{self.log_text()[-4000:]}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            if self.proc is not None:
                self.kill_group()
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            _unwatch(f"pgrp-{id(self)}")
            _unregister(self)


# -- Redis --------------------------------------------------------------------------

class PrivateRedis(_Managed):
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
        self.proc = subprocess.Popen(_die_with_parent(self._argv()), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        _register(self)
        _watch_pid(f"redis-{id(self)}", self.proc.pid)
        try:
            self._wait_ready(timeout or self.READY_TIMEOUT)
        except BaseException:
            _kill_popen(self.proc)
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
                                   f"{_tail(self.log_path)}")
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
                           f"{_tail(self.log_path)}")

    def client(self, db: int = 0, **kwargs):
        """A redis-py client to this server (caller closes it)."""
        import redis

        kwargs.setdefault("socket_connect_timeout", 5)
        kwargs.setdefault("socket_timeout", 10)
        return redis.Redis(self.host, self.port, db=db, **kwargs)

    def kill(self) -> None:
        """SIGKILL the server (by pid) and reap it."""
        _kill_popen(self.proc)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful SIGTERM shutdown (SIGKILL after ``timeout``)."""
        _stop_popen(self.proc, timeout)

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
        return _tail(self.log_path, 1 << 20)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
            _unwatch(f"redis-{id(self)}")
            _unregister(self)


# -- PostgreSQL -----------------------------------------------------------------------

def _pg_bindir() -> Path:
    cands = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not cands:
        found = shutil.which("initdb")
        if not found:
            raise RuntimeError("no initdb found under /usr/lib/postgresql/*/bin")
        return Path(found).parent

    def ver(p: str):
        v = Path(p).parent.parent.name
        return tuple(int(x) if x.isdigit() else 0 for x in v.split("."))

    return Path(max(cands, key=ver)).parent


class PrivatePostgres(_Managed):
    """A PostgreSQL cluster of our own: initdb'd on first start(), trust auth,
    listening only on 127.0.0.1:<free port>, unix sockets in its own dir.

    Runs as the ``postgres`` OS user when we are root (the data dir is chowned
    to it).  If ``tmpdir`` is not reachable by that user (pytest's tmp dirs are
    0700 root) or too long for a unix socket path, the cluster goes into a
    fresh ``/tmp/faultkit-pg-*`` dir instead, removed again by close();
    ``base`` says where it is.  fsync is off: a killed *process* loses nothing
    committed (the OS still has the pages), only an OS crash would."""

    DB = "qfarm"
    START_TIMEOUT = 120

    def __init__(self, tmpdir: str | os.PathLike, port: int | None = None, dbname: str = DB,
                 extra_conf: dict[str, str] | None = None):
        self.port = port or free_port()
        self.host = LOOPBACK
        self.dbname = dbname
        self.extra_conf = extra_conf or {}
        self.bindir = _pg_bindir()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self._own_base = False
        self.base = self._choose_base(Path(tmpdir))
        self.datadir = self.base / "data"
        self.sockdir = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self._initialized = (self.datadir / "PG_VERSION").exists()
        self._db_created = False
        _register(self)  # from now on there may be a dir (and later a server) to clean up
        _watch(f"pg-{id(self)}", "pg", self.bindir / "pg_ctl", self.datadir, self.as_user or "")
        if self._own_base:
            _watch(f"pgdir-{id(self)}", "rmtree", self.base)

    # where to put it
    def _choose_base(self, tmpdir: Path) -> Path:
        tmpdir.mkdir(parents=True, exist_ok=True)
        base = tmpdir / "pg"
        sock_len = len(str(base / "sock" / f".s.PGSQL.{self.port}.lock"))
        if sock_len < 100 and self._user_can_enter(tmpdir):
            base.mkdir(exist_ok=True)
            self._chown(base)
            return base
        self._own_base = True
        base = Path(tempfile.mkdtemp(prefix="faultkit-pg-", dir="/tmp"))
        self._chown(base)
        return base

    def _user_can_enter(self, d: Path) -> bool:
        if self.as_user is None:
            return True
        r = subprocess.run(["runuser", "-u", self.as_user, "--", "test", "-x", str(d)],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
        return r.returncode == 0

    def _chown(self, path: Path) -> None:
        if self.as_user is not None:
            shutil.chown(path, self.as_user, self.as_user)

    def _run(self, *argv: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in argv]
        if self.as_user is not None:
            cmd = ["runuser", "-u", self.as_user, "--", *cmd]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                           cwd=self.base, env=env)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}\n"
                               f"--- log ---\n{_tail(self.log_path)}")
        return r

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{self.dbname}"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    @property
    def sqlalchemy_url(self) -> str:
        return self.url.replace("postgresql://", "postgresql+psycopg://", 1)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    @property
    def running(self) -> bool:
        if not self._initialized or not (self.datadir / "PG_VERSION").exists():
            return False
        return self._run(self.bindir / "pg_ctl", "status", "-D", self.datadir, check=False, timeout=60).returncode == 0

    def initdb(self) -> None:
        if self._initialized:
            return
        self.sockdir.mkdir(exist_ok=True)
        self._chown(self.sockdir)
        self._run(self.bindir / "initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")
        conf = {
            "listen_addresses": f"'{self.host}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.sockdir}'",
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "100",
            "shared_buffers": "32MB",
            "logging_collector": "off",
            **self.extra_conf,
        }
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# faultkit\n" + "".join(f"{k} = {v}\n" for k, v in conf.items()))
        self._initialized = True

    def start(self, timeout: float | None = None) -> PrivatePostgres:
        """initdb if needed, pg_ctl -w start, create the database once."""
        _register(self)
        self.initdb()
        if not self.running:
            t = int(timeout or self.START_TIMEOUT)
            self._run(self.bindir / "pg_ctl", "start", "-w", "-t", t, "-D", self.datadir, "-l", self.log_path,
                      timeout=t + 30)
        self._wait_ready(timeout or self.START_TIMEOUT)
        if not self._db_created:
            self._create_db()
        return self

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url_for("postgres"), connect_timeout=3) as c:
                    c.execute("SELECT 1")
                return
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postgres on {self.port} not ready: {e}\n{_tail(self.log_path)}") from e
                time.sleep(0.1)

    def _create_db(self) -> None:
        import psycopg

        with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=10) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone():
                c.execute(f'CREATE DATABASE "{self.dbname}"')
        self._db_created = True

    def stop(self, mode: str = "fast", timeout: float = 120) -> None:
        """pg_ctl stop -w (mode: smart | fast | immediate)."""
        if self._initialized and self.running:
            self._run(self.bindir / "pg_ctl", "stop", "-w", "-t", int(timeout), "-m", mode, "-D", self.datadir,
                      timeout=timeout + 30, check=False)
            if self.running:
                raise RuntimeError(f"postgres on {self.port} did not stop:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """Immediate shutdown (no checkpoint; crash recovery on next start)."""
        self.stop(mode="immediate")

    def restart(self, mode: str = "fast") -> PrivatePostgres:
        self.stop(mode=mode)
        return self.start()

    def log_text(self) -> str:
        return _tail(self.log_path, 1 << 20)

    def close(self) -> None:
        try:
            if self._initialized:
                with contextlib.suppress(Exception):
                    self.stop(mode="immediate", timeout=60)
                pid = self.pid  # last resort: only the postmaster recorded in OUR data dir
                if pid is not None:
                    with contextlib.suppress(psutil.Error):
                        if Path(psutil.Process(pid).cwd()).resolve() == self.datadir.resolve():
                            kill_tree(pid, signal.SIGKILL, wait_timeout=10)
            if self._own_base:
                shutil.rmtree(self.base, ignore_errors=True)
                self._initialized = False  # the cluster is gone with its dir
        finally:
            _unwatch(f"pg-{id(self)}")
            _unwatch(f"pgdir-{id(self)}")
            _unregister(self)


# -- a TCP proxy that can cut the network ---------------------------------------------

def _reset(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Conn:
    BUF_LIMIT = 1 << 20

    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.socks = {"c": client, "u": upstream}
        self.buf = {"c": bytearray(), "u": bytearray()}      # bytes waiting to be written TO that side
        self.eof = {"c": False, "u": False}                   # that side sent FIN
        self.shut = {"c": False, "u": False}                  # we sent FIN to that side
        self.registered = {"c": 0, "u": 0}


class CuttableProxy(_Managed):
    """A TCP proxy on ``host:port`` forwarding to ``upstream_host:upstream_port``.

    ``cut()``: stop listening (new connections are refused) and reset every
    open connection on both sides.  ``restore()``: listen again on the same
    port.  ``drop_connections()``: reset the open connections, keep listening.
    One event-loop thread does all socket I/O (non-blocking), so a cut never
    waits for a blocked send/recv."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int | None = None, host: str = LOOPBACK,
                 connect_timeout: float = 5.0):
        self.upstream = (upstream_host, int(upstream_port))
        self.host = host
        self.port = port or free_port(host)
        self.connect_timeout = connect_timeout
        self._thread: threading.Thread | None = None
        self._cmds: queue.Queue = queue.Queue()
        self._wake_r = self._wake_w = None
        self._listener: socket.socket | None = None
        self._conns: set[_Conn] = set()
        self._listening = False
        self.accepted = 0
        self.errors: list[str] = []

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def is_cut(self) -> bool:
        return not self._listening

    @property
    def active_connections(self) -> int:
        return len(self._conns)

    # public API -----------------------------------------------------------
    def start(self) -> CuttableProxy:
        if self.running:
            return self
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name=f"CuttableProxy:{self.port}", daemon=True)
        self._thread.start()
        _register(self)
        self.restore()
        return self

    def restore(self) -> None:
        """Listen again on the same port (no-op if listening)."""
        if self._listening:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 30
        while True:
            try:
                ls.bind((self.host, self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    ls.close()
                    raise
                time.sleep(0.1)
        ls.listen(128)
        ls.setblocking(False)
        self._call("listen", ls)

    def cut(self) -> None:
        """Refuse new connections and reset all open ones (both directions)."""
        self._call("cut")

    def drop_connections(self) -> None:
        """Reset all open connections but keep accepting new ones."""
        self._call("drop")

    def stop(self) -> None:
        if self.running:
            self._call("stop")
            self._thread.join(10)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for s in (self._wake_r, self._wake_w):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            self._wake_r = self._wake_w = None
            _unregister(self)

    # event loop -------------------------------------------------------------
    def _call(self, op: str, arg=None, timeout: float = 30.0) -> None:
        if not self.running:
            if op == "listen":
                arg.close()
            if op in ("stop",):
                return
            raise RuntimeError("proxy is not running")
        done = threading.Event()
        self._cmds.put((op, arg, done))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if not done.wait(timeout):
            raise TimeoutError(f"proxy {op} did not complete")

    def _loop(self) -> None:
        try:
            while True:
                for key, mask in self._sel.select(timeout=1.0):
                    data = key.data
                    if data == "wake":
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                        while not self._cmds.empty():
                            op, arg, done = self._cmds.get_nowait()
                            try:
                                if self._command(op, arg):
                                    return
                            finally:
                                done.set()
                    elif data == "listen":
                        self._accept()
                    else:
                        conn, side = data
                        if conn in self._conns:
                            try:
                                self._io(conn, side, mask)
                            except OSError:
                                self._abort(conn)
        except Exception as e:  # keep a record; never hang callers
            self.errors.append(repr(e))
        finally:
            self._close_listener()
            for c in list(self._conns):
                self._abort(c)
            # release anybody still waiting
            while not self._cmds.empty():
                with contextlib.suppress(queue.Empty):
                    op, arg, done = self._cmds.get_nowait()
                    if op == "listen":
                        arg.close()
                    done.set()
            self._sel.close()

    def _command(self, op: str, arg) -> bool:
        if op == "listen":
            self._close_listener()
            self._listener = arg
            self._sel.register(arg, selectors.EVENT_READ, "listen")
            self._listening = True
        elif op == "cut":
            self._close_listener()
            for c in list(self._conns):
                self._abort(c)
        elif op == "drop":
            for c in list(self._conns):
                self._abort(c)
        elif op == "stop":
            return True
        return False

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                self._sel.unregister(self._listener)
            with contextlib.suppress(OSError):
                self._listener.close()  # also RSTs connections still in the accept queue
            self._listener = None
        self._listening = False

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self.errors.append(f"accept: {e!r}")
                return
            self.accepted += 1
            try:
                upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
            except OSError:
                _reset(client)  # upstream down: the client sees a reset
                continue
            for s in (client, upstream):
                s.setblocking(False)
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(client, upstream)
            self._conns.add(conn)
            self._update(conn)

    @staticmethod
    def _other(side: str) -> str:
        return "u" if side == "c" else "c"

    def _io(self, conn: _Conn, side: str, mask: int) -> None:
        s, other = conn.socks[side], self._other(side)
        if mask & selectors.EVENT_READ:
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:  # reset by that side: pass the reset on
                self._abort(conn)
                return
            if data:
                conn.buf[other] += data
            elif data == b"":
                conn.eof[side] = True
        if mask & selectors.EVENT_WRITE and conn.buf[side]:
            try:
                n = s.send(conn.buf[side])
                del conn.buf[side][:n]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._abort(conn)
                return
        # half-close: forward a FIN once everything before it is delivered
        for sd in ("c", "u"):
            src = self._other(sd)
            if conn.eof[src] and not conn.buf[sd] and not conn.shut[sd]:
                with contextlib.suppress(OSError):
                    conn.socks[sd].shutdown(socket.SHUT_WR)
                conn.shut[sd] = True
        if conn.shut["c"] and conn.shut["u"]:
            self._finish(conn)
            return
        self._update(conn)

    def _update(self, conn: _Conn) -> None:
        for side in ("c", "u"):
            other = self._other(side)
            ev = 0
            if not conn.eof[side] and len(conn.buf[other]) < _Conn.BUF_LIMIT:
                ev |= selectors.EVENT_READ
            if conn.buf[side]:
                ev |= selectors.EVENT_WRITE
            s, cur = conn.socks[side], conn.registered[side]
            if ev == cur:
                continue
            if cur and ev:
                self._sel.modify(s, ev, (conn, side))
            elif ev:
                self._sel.register(s, ev, (conn, side))
            else:
                self._sel.unregister(s)
            conn.registered[side] = ev

    def _unregister_conn(self, conn: _Conn) -> None:
        for side in ("c", "u"):
            if conn.registered[side]:
                with contextlib.suppress(Exception):
                    self._sel.unregister(conn.socks[side])
                conn.registered[side] = 0
        self._conns.discard(conn)

    def _abort(self, conn: _Conn) -> None:
        self._unregister_conn(conn)
        _reset(conn.socks["c"])
        _reset(conn.socks["u"])

    def _finish(self, conn: _Conn) -> None:
        self._unregister_conn(conn)
        for s in conn.socks.values():
            with contextlib.suppress(OSError):
                s.close()


# -- S3 (moto) ----------------------------------------------------------------------------

class MotoS3(_Managed):
    """moto's S3 server in its own process, reached through a CuttableProxy.

    moto keeps everything in memory, so a restart would lose the data: S3
    faults are network faults, via ``cut()`` / ``restore()`` /
    ``drop_connections()`` on the proxy.  ``endpoint`` goes through the
    proxy; ``direct_endpoint`` does not."""

    READY_TIMEOUT = 90.0

    def __init__(self, tmpdir: str | os.PathLike | None = None, port: int | None = None,
                 proxy_port: int | None = None):
        self._own_dir = tmpdir is None
        self.dir = Path(tmpdir) if tmpdir is not None else Path(tempfile.mkdtemp(prefix="faultkit-moto-"))
        self.host = LOOPBACK
        self.port = port or free_port()
        self.proxy = CuttableProxy(self.host, self.port, port=proxy_port)
        self.log_path = self.dir / "moto.log"
        self.proc: subprocess.Popen | None = None
        self._log = None
        if self._own_dir:
            _register(self)
            _watch(f"motodir-{id(self)}", "rmtree", self.dir)

    @property
    def direct_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.proxy.host}:{self.proxy.port}"

    @property
    def url(self) -> str:
        return self.endpoint

    @property
    def proxy_port(self) -> int:
        return self.proxy.port

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float | None = None) -> MotoS3:
        if not self.running:
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._log is not None:
                self._log.close()
            self._log = open(self.log_path, "ab")
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}
            argv = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)]
            self.proc = subprocess.Popen(_die_with_parent(argv), stdin=subprocess.DEVNULL, stdout=self._log,
                                         stderr=subprocess.STDOUT, env=env, cwd=self.dir)
            _register(self)
            _watch_pid(f"moto-{id(self)}", self.proc.pid)
            try:
                self._wait_ready(timeout or self.READY_TIMEOUT)
            except BaseException:
                _kill_popen(self.proc)
                raise
        self.proxy.start()
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited ({self.proc.returncode}):\n{_tail(self.log_path)}")
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
            time.sleep(0.1)
        raise TimeoutError(f"moto server not ready after {timeout:.0f}s ({last}):\n{_tail(self.log_path)}")

    def cut(self) -> None:
        self.proxy.cut()

    def restore(self) -> None:
        self.proxy.restore()

    def drop_connections(self) -> None:
        self.proxy.drop_connections()

    def reset(self) -> None:
        """Forget every bucket and object (moto's /moto-api/reset)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            c.request("POST", "/moto-api/reset")
            c.getresponse().read()
        finally:
            c.close()

    def stop(self, timeout: float = 30.0) -> None:
        _stop_popen(self.proc, timeout)

    def kill(self) -> None:
        _kill_popen(self.proc)

    def log_text(self) -> str:
        return _tail(self.log_path, 1 << 20)

    def close(self) -> None:
        try:
            self.proxy.close()
        finally:
            try:
                self.kill()
            finally:
                if self._log is not None:
                    with contextlib.suppress(OSError):
                        self._log.close()
                    self._log = None
                if self._own_dir:
                    shutil.rmtree(self.dir, ignore_errors=True)
                _unwatch(f"moto-{id(self)}")
                _unwatch(f"motodir-{id(self)}")
                _unregister(self)


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
