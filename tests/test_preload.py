"""The worker's parent imports the heavy libraries once; its job processes,
forked from it, start with them loaded."""

import subprocess
import sys

import pytest

from worker import preload

pytestmark = pytest.mark.slow

FORKED_JOB = r"""
import os, sys
from worker import preload
done = preload.preload()
import torch
assert not torch.cuda.is_initialized()
pid = os.fork()
if pid == 0:
    # A job process: the libraries are there without importing, and work,
    # and a full collection does not walk their objects (they are frozen).
    import gc
    ok = "llmcompressor.entrypoints.oneshot" in sys.modules and float(torch.ones(3).sum()) == 3.0
    ok = ok and done.frozen >= gc.get_freeze_count() > 100_000 and len(gc.get_objects()) < gc.get_freeze_count() / 10
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), len(done.loaded), len(preload.MODULES))
"""

# A library that initialises CUDA when imported, as some query the device.
CUDA_ON_IMPORT = """
import torch
torch.cuda.is_initialized = lambda: True
"""

PROBED = r"""
import sys
from worker import preload
done = preload.preload(("json", "cuda_on_import", "csv", "needs_cuda_on_import", "cuda_on_import.sub"), probe=True)
print(done.loaded, done.skipped, "cuda_on_import" in sys.modules)
"""


def run(code, **kwargs):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, **kwargs)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_forked_job_process_inherits_the_libraries():
    code, loaded, wanted = run(FORKED_JOB).split()
    assert code == "0" and loaded == wanted


def test_a_module_that_initialises_cuda_is_left_to_the_jobs(tmp_path):
    (tmp_path / "cuda_on_import").mkdir()
    (tmp_path / "cuda_on_import" / "__init__.py").write_text(CUDA_ON_IMPORT)
    (tmp_path / "cuda_on_import" / "sub.py").write_text("")
    # What imports such a module is left to the jobs too, without importing
    # it again in a probe (the probe refuses it).
    (tmp_path / "needs_cuda_on_import.py").write_text("import cuda_on_import\n")
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}", "CUDA_VISIBLE_DEVICES": ""}
    assert run(PROBED, env=env) == ("['json', 'csv'] ['cuda_on_import', 'needs_cuda_on_import', 'cuda_on_import.sub'] False")


def test_refuses_a_parent_that_initialised_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(preload.PreloadError, match="could not use the GPU"):
        preload.preload(("json",), probe=False)


def test_the_gpu_check_runs_beside_the_parent_s_imports(monkeypatch, tmp_path):
    # A process forked from the probe child, which imported every module the
    # parent imports, must get the GPU; the parent does not wait to fork its own.
    import os

    monkeypatch.setattr(preload, "_gpu_visible", lambda: True)
    where = tmp_path / "checked"

    def uses_gpu(ok):
        where.write_text(str(os.getppid()))
        return ok

    monkeypatch.setattr(preload, "_uses_gpu", lambda: uses_gpu(True))
    assert preload.preload(("json", "csv"), probe=True).loaded == ["json", "csv"]
    assert int(where.read_text()) != os.getpid()  # forked from the probe child, not from here
    monkeypatch.setattr(preload, "_uses_gpu", lambda: uses_gpu(False))
    with pytest.raises(preload.PreloadError, match="could not use the GPU"):
        preload.preload(("json",), probe=True)
