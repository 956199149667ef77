"""A PostgreSQL cluster of our own (initdb, a free port), to stop and start."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from tests.support.cleanup import Managed, register, unregister, unwatch, watch
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import kill_tree, tail


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


class PrivatePostgres(Managed):
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
        register(self)  # from now on there may be a dir (and later a server) to clean up
        watch(f"pg-{id(self)}", "pg", self.bindir / "pg_ctl", self.datadir, self.as_user or "")
        if self._own_base:
            watch(f"pgdir-{id(self)}", "rmtree", self.base)

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
                               f"--- log ---\n{tail(self.log_path)}")
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
        register(self)
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
                    raise TimeoutError(f"postgres on {self.port} not ready: {e}\n{tail(self.log_path)}") from e
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
                raise RuntimeError(f"postgres on {self.port} did not stop:\n{tail(self.log_path)}")

    def kill(self) -> None:
        """Immediate shutdown (no checkpoint; crash recovery on next start)."""
        self.stop(mode="immediate")

    def restart(self, mode: str = "fast") -> PrivatePostgres:
        self.stop(mode=mode)
        return self.start()

    def log_text(self) -> str:
        return tail(self.log_path, 1 << 20)

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
            unwatch(f"pg-{id(self)}")
            unwatch(f"pgdir-{id(self)}")
            unregister(self)
