"""Processes a test starts: a whole tree or group killed by pid, never by name.

    with ProcessGroup([...], tmp_path / "worker.log") as g:
        g.wait_for_log("ready"); g.signal_group(signal.SIGTERM); g.wait(30)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from tests.support.cleanup import Managed, register, unregister, unwatch, watch_pid


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


def die_with_parent(cmd: list[str]) -> list[str]:
    """Prefix ``setpriv --pdeathsig KILL`` (PR_SET_PDEATHSIG follows the forking
    *thread*, so only from the main thread)."""
    setpriv = shutil.which("setpriv")
    if setpriv and threading.current_thread() is threading.main_thread():
        return [setpriv, "--pdeathsig", "KILL", "--", *cmd]
    return cmd


def tail(path: Path | None, n: int = 4000) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


def stop_popen(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
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


def kill_popen(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait(30)


class ProcessGroup(Managed):
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
        argv = die_with_parent(self.cmd) if self.die_with_parent else self.cmd
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.cwd, start_new_session=True)
        register(self)
        watch_pid(f"pgrp-{id(self)}", self.proc.pid, "pgrp")
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
            unwatch(f"pgrp-{id(self)}")
            unregister(self)
