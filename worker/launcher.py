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

from api_client.errors import SpecError
from worker.gpu import GpuInfo, nvml_gpus
from worker.routing import queues_for_device


@dataclass
class WorkerPlan:
    name: str
    gpu: GpuInfo | None
    queues: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        what = f"GPU {self.gpu.index} ({self.gpu.name})" if self.gpu else "CPU"
        return f"{self.name}: {what}, queues {','.join(self.queues)}"


def plan(gpus: str, available: list[GpuInfo] | None = None) -> list[WorkerPlan]:
    available = nvml_gpus() if available is None else available
    if gpus == "auto":
        gpus = "all" if available else "cpu"
    if gpus == "cpu":
        return [WorkerPlan("cpu", None, queues_for_device(None),
                           {"CUDA_VISIBLE_DEVICES": "", "QFARM_GPU_INDEX": "cpu"})]
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
        WorkerPlan(f"gpu{g.index}", g, queues_for_device(g.capability), {
            # NVML numbers GPUs in PCI bus order; make CUDA agree.
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
            "CUDA_VISIBLE_DEVICES": str(g.index),
            "QFARM_GPU_INDEX": str(g.index),
        })
        for g in chosen
    ]


def command(p: WorkerPlan, loglevel: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.app:app", "worker",
        "--hostname", f"{p.name}@{socket.gethostname()}",
        "--queues", ",".join(p.queues),
        "--concurrency", "1", "--prefetch-multiplier", "1", "--pool", "prefork",
        "--loglevel", loglevel,
    ]


def run(plans: list[WorkerPlan], loglevel: str = "INFO", echo=print) -> int:
    """Start the workers and wait. Ctrl-C (SIGINT/SIGTERM) is passed on: the
    first lets running jobs finish, a second stops them."""
    procs: list[subprocess.Popen] = []
    for p in plans:
        # Progress bars of the libraries would flood the worker log (Celery
        # logs a job's stderr line by line); stages are in the job events.
        env = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **os.environ, **p.env}
        echo(f"starting {p.describe()}")
        procs.append(subprocess.Popen(command(p, loglevel), env=env))

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

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
