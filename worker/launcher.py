"""`qfarm worker start`: one Celery worker process per GPU, each pinned to
its GPU with CUDA_VISIBLE_DEVICES and consuming the queues its GPU can serve."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from api_client import catalog, routing
from api_client.errors import SpecError
from worker.gpu import GpuInfo, nvml_gpus


def queues_for_device(farm: str, capability: tuple[int, int] | None, remote_code: bool = False) -> list[str]:
    return routing.queues_for_worker(farm, capability, catalog.capabilities(), remote_code)


@dataclass
class WorkerPlan:
    name: str
    gpu: GpuInfo | None
    queues: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        what = f"GPU {self.gpu.index} ({self.gpu.name})" if self.gpu else "CPU"
        return f"{self.name}: {what}, queues {','.join(self.queues)}"


def plan(gpus: str, farm: str, available: list[GpuInfo] | None = None, remote_code: bool = False) -> list[WorkerPlan]:
    """One worker per GPU asked for. Names carry the launcher's pid, so two
    launchers on one host (two CPU workers, say) never share a name, which
    Celery would take for one worker."""
    available = nvml_gpus() if available is None else available
    pid = os.getpid()
    code = {"QFARM_ALLOW_REMOTE_CODE": "1" if remote_code else "0"}
    if gpus == "auto":
        gpus = "all" if available else "cpu"
    if gpus == "cpu":
        return [WorkerPlan(f"cpu-{pid}", None, queues_for_device(farm, None, remote_code),
                           {"CUDA_VISIBLE_DEVICES": "", "QFARM_GPU_INDEX": "cpu", **code})]
    if gpus == "all":
        if not available:
            raise SpecError("no NVIDIA GPU found (NVML did not answer): use --gpus cpu")
        chosen = available
    else:
        try:
            wanted = [int(x) for x in gpus.split(",") if x.strip()]
        except ValueError:
            raise SpecError(f"--gpus takes all, cpu, auto or indices like 0,1; not {gpus!r}") from None
        if not wanted or len(set(wanted)) != len(wanted):
            raise SpecError(f"--gpus {gpus!r} must list distinct GPU indices")
        by_index = {g.index: g for g in available}
        missing = [i for i in wanted if i not in by_index]
        if missing:
            have = ",".join(str(i) for i in by_index) or "none"
            raise SpecError(f"no GPU {missing[0]} on this host (GPUs: {have})")
        chosen = [by_index[i] for i in wanted]
    return [
        WorkerPlan(f"gpu{g.index}-{pid}", g, queues_for_device(farm, g.capability, remote_code), {
            # NVML numbers GPUs in PCI bus order; make CUDA agree.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": str(g.index),
            "QFARM_GPU_INDEX": str(g.index),
            "QFARM_GPU_NAME": g.name,
            **code,
        })
        for g in chosen
    ]


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def command(p: WorkerPlan, loglevel: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app:app", "worker",
        "--hostname", f"{p.name}@{socket.gethostname()}",
        "--queues", ",".join(p.queues),
        "--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "prefork",
        # Mingle waits a second at start for other workers' revoked ids
        # (a job's row says whether it was cancelled) and gossip follows
        # their events: neither is used, and the wait delays the first job.
        "--without-mingle", "--without-gossip",
        "--loglevel", loglevel,
    ]


def run(plans: list[WorkerPlan], loglevel: str = "INFO", echo=print) -> int:
    """Start the workers and wait.

    SIGTERM (systemd's stop and restart, to the launcher alone or to the
    whole group) reaches every worker and its job process: each job hands
    itself back to the queue for the next worker, and the workers exit.
    SIGINT (Ctrl-C) is Celery's: the first lets running jobs finish, a
    second stops them.
    """
    procs: list[subprocess.Popen] = []
    for p in plans:
        # Progress bars of the libraries would flood the worker log (Celery
        # logs a job's stderr line by line); stages are in the job events.
        env = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **os.environ, **p.env,
               "QFARM_QUEUES": ",".join(p.queues)}
        echo(f"starting {p.describe()}")
        procs.append(subprocess.Popen(command(p, loglevel), env=env))

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                targets = [proc.pid]
                if signum == signal.SIGTERM:
                    targets += _descendants(proc.pid)
                for pid in targets:
                    try:
                        os.kill(pid, signum)
                    except ProcessLookupError:
                        pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            for proc in procs:
                code = proc.poll()
                if code is not None:
                    # One worker down means a GPU silently idle: stop the rest
                    # and exit, so whatever supervises us restarts the set.
                    for other in procs:
                        if other.poll() is None:
                            other.terminate()
                    for other in procs:
                        other.wait()
                    return code
            time.sleep(0.5)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
