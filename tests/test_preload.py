"""The worker's parent imports the heavy libraries once; its job processes,
forked from it, start with them loaded."""

import subprocess
import sys

import pytest

from worker import preload

CHILD = r"""
import os, sys
from worker import preload
seconds = preload.preload()
import torch
assert not torch.cuda.is_initialized()
pid = os.fork()
if pid == 0:
    # A job process: the libraries are there without importing, and work.
    ok = "llmcompressor.entrypoints.oneshot" in sys.modules and float(torch.ones(3).sum()) == 3.0
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), round(seconds, 1))
"""


def test_forked_job_process_inherits_the_libraries():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    code, seconds = out.stdout.split()[-2:]
    assert code == "0" and float(seconds) > 0


def test_refuses_a_parent_that_initialised_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(preload.PreloadError, match="QFARM_PRELOAD=0"):
        preload.preload(("json",))


def test_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("QFARM_PRELOAD", "0")
    assert not preload.enabled()
    monkeypatch.delenv("QFARM_PRELOAD")
    assert preload.enabled()
