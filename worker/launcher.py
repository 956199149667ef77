"""`qfarm worker start`: one Celery worker process per GPU, each pinned to
its GPU with CUDA_VISIBLE_DEVICES and consuming the queues its GPU can serve,
or CPU workers (one unless --cpu-workers asks for more, each with its share
of the host's cores).

A launcher holds a lock on every device it starts workers on (under
QFARM_HOME/locks), passed down to its workers and their job processes: a
second launcher on the same GPUs or CPU refuses in one line instead of
running jobs side by side, each many times slower than alone.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from api_client import config
from api_client.contract import catalog, routing
from api_client.errors import QFarmError, SpecError
from worker.gpu import GpuInfo, nvml_gpus


def queues_for_device(farm: str, capability: tuple[int, int] | None, remote_code: bool = False) -> list[str]:
    return routing.queues_for_worker(farm, capability, catalog.capabilities(), remote_code)


@dataclass
class WorkerPlan:
    name: str
    gpu: GpuInfo | None
    queues: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """What the worker occupies: `gpu<N>` or `cpu` (its lock's name)."""
        return f"gpu{self.gpu.index}" if self.gpu else "cpu"

    def describe(self) -> str:
        what = f"GPU {self.gpu.index} ({self.gpu.name})" if self.gpu else f"CPU ({self.env[config.CPU_THREADS.name]} threads)"
        return f"{self.name}: {what}, queues {','.join(self.queues)}"


def host_cores() -> int:
    """The cores this process may run on (its affinity, which a container's
    cpuset limits), not the host's whole count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def plan(gpus: str, farm: str, available: list[GpuInfo] | None = None, remote_code: bool = False,
         cpu_workers: int = 1) -> list[WorkerPlan]:
    """One worker per GPU asked for, or `cpu_workers` CPU workers sharing the
    host's cores. Names carry the launcher's pid, so workers of two
    launchers (two hosts' farms sharing a broker) never share a name, which
    Celery would take for one worker."""
    available = nvml_gpus() if available is None else available
    pid = os.getpid()
    code = {config.ALLOW_REMOTE_CODE.name: "1" if remote_code else "0"}
    if gpus == "auto":
        gpus = "all" if available else "cpu"
    if cpu_workers < 1:
        raise SpecError(f"--cpu-workers must be at least 1, not {cpu_workers}")
    if cpu_workers > 1 and gpus != "cpu":
        raise SpecError("--cpu-workers is for CPU workers: add --gpus cpu")
    if gpus == "cpu":
        threads = str(max(1, host_cores() // cpu_workers))
        # torch reads the OpenMP variables as it starts; the job sets its
        # thread count again from QFARM_CPU_THREADS (worker/gpu.py).
        env = {"CUDA_VISIBLE_DEVICES": "", config.GPU_INDEX.name: "cpu", config.CPU_THREADS.name: threads,
               "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **code}
        names = [f"cpu-{pid}"] if cpu_workers == 1 else [f"cpu{i}-{pid}" for i in range(cpu_workers)]
        return [WorkerPlan(name, None, queues_for_device(farm, None, remote_code), dict(env)) for name in names]
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
            config.GPU_INDEX.name: str(g.index),
            config.GPU_NAME.name: g.name,
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


def hold_devices(plans: list[WorkerPlan], home: Path) -> list[int]:
    """Lock the devices of `plans` for this launcher (QFARM_HOME/locks/<device>.lock);
    the descriptors returned are passed to the workers, so a lock holds while
    any process of this launcher lives. Refuses in one line when another
    launcher holds one."""
    locks = home / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    held: list[int] = []
    for device in dict.fromkeys(p.device for p in plans):
        path = locks / f"{device}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            for other in held:
                os.close(other)
            what = "the CPU" if device == "cpu" else f"GPU {device.removeprefix('gpu')}"
            more = "; for more CPU workers, start one launcher with --cpu-workers N" if device == "cpu" else ""
            raise QFarmError(f"{what} of this host already has qfarm workers (launcher pid {holder}, lock {path}): "
                             f"stop them first{more}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held.append(fd)
    return held


def run(plans: list[WorkerPlan], loglevel: str = "INFO", echo=print, held: list[int] | None = None) -> int:
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
               config.QUEUES.name: ",".join(p.queues)}
        echo(f"starting {p.describe()}")
        procs.append(subprocess.Popen(command(p, loglevel), env=env, pass_fds=tuple(held or ())))

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
