"""Everything a test starts is stopped again, even when the test process dies.

Three nets, innermost first: each helper's ``close()`` (context managers call
it); an ``atexit`` hook that closes whatever is still open; and a watchdog
process that outlives a SIGKILLed test process and cleans up what was
registered with it. Processes started from the main thread also get
``PR_SET_PDEATHSIG=SIGKILL`` (processes.die_with_parent).
"""

from __future__ import annotations

import atexit
import contextlib
import subprocess
import sys
import threading

import psutil

# -- registry: everything started is closed at exit ----------------------------

_LIVE: dict[int, object] = {}
_LIVE_LOCK = threading.Lock()


def register(obj) -> None:
    with _LIVE_LOCK:
        _LIVE[id(obj)] = obj


def unregister(obj) -> None:
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


def watch(key: str, *args) -> None:
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


def unwatch(key: str) -> None:
    with _WD_LOCK:
        if _WD is not None and _WD.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                _WD.stdin.write(f"del\t{key}\n")
                _WD.stdin.flush()


def watch_pid(key: str, pid: int, kind: str = "pid") -> None:
    try:
        ctime = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return
    watch(key, kind, pid, ctime)


class Managed:
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
