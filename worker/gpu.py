"""The device a worker runs on, and how much of its memory a job used.

NVML (nvidia-ml-py) answers without creating a CUDA context, so the launcher
and the worker's parent process use it; torch is only touched inside a job.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from api_client.config import Settings
from api_client.errors import QFarmError


class DeviceUnsupported(QFarmError):
    """This worker's hardware cannot run what the job asks."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    total_bytes: int
    uuid: str = ""


def nvml_gpus() -> list[GpuInfo]:
    """Every NVIDIA GPU on this host, in PCI bus order; [] without a driver."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVIDIA driver: no GPUs
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            cap = pynvml.nvmlDeviceGetCudaComputeCapability(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            out.append(GpuInfo(i, name.decode() if isinstance(name, bytes) else name, tuple(cap), mem.total,
                               uuid.decode() if isinstance(uuid, bytes) else uuid))
        return out
    finally:
        pynvml.nvmlShutdown()


def nvml_free_bytes(index: int) -> int | None:
    """Free memory of the host's GPU `index` as NVML sees it (every process's
    use counted), without a CUDA context; None without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVIDIA driver: no figure
        return None
    try:
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).free)
    except Exception:  # noqa: BLE001 - a GPU gone or busy: no figure this beat
        return None
    finally:
        pynvml.nvmlShutdown()


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    index: int | None  # the host's GPU index (NVML order), None on CPU
    name: str
    capability: tuple[int, int] | None = None
    total_bytes: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch_device(self) -> str:
        return "cuda:0" if self.is_cuda else "cpu"

    def require_capability(self, needed: tuple[int, int], what: str) -> None:
        if not self.is_cuda:
            raise DeviceUnsupported(f"{what} needs an NVIDIA GPU of compute capability {needed[0]}.{needed[1]} or newer; this worker runs on the CPU")
        if self.capability is None or self.capability < needed:
            have = f"{self.capability[0]}.{self.capability[1]}" if self.capability else "an unknown one"
            raise DeviceUnsupported(f"{what} needs compute capability {needed[0]}.{needed[1]} or newer (Ada, Hopper); {self.name} has {have}")


def worker_gpu_index() -> int | None:
    """The host GPU this worker process is pinned to (set by `qfarm worker start`)."""
    index = Settings.from_env().gpu_index
    if isinstance(index, int):
        return index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return int(visible) if visible.isdigit() else None


@dataclass(frozen=True)
class Identity:
    """Which device a worker runs on, as its job rows name it; known without
    touching CUDA (the launcher passes the GPU's name on)."""

    index: int | None
    name: str


def identity() -> Identity:
    index = worker_gpu_index()
    if index is None:
        return Identity(None, "cpu")
    name = Settings.from_env().gpu_name or next((g.name for g in nvml_gpus() if g.index == index), f"GPU {index}")
    return Identity(index, name)


def detect() -> Device:
    """The device of this (job) process; touches CUDA."""
    import torch

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" or not torch.cuda.is_available():
        # A CPU worker's share of the host's cores (qfarm worker start --cpu-workers).
        threads = Settings.from_env().cpu_threads
        if threads:
            torch.set_num_threads(threads)
        return Device("cpu", None, "cpu")
    props = torch.cuda.get_device_properties(0)
    return Device("cuda", worker_gpu_index() or 0, props.name, (props.major, props.minor), props.total_memory)


def peak_rss() -> int:
    """Peak resident memory of this (job) process so far, in bytes: the
    memory figure of a CPU worker. The job process is fresh for each job
    (worker/job_process.py), so it is the job's, plus the libraries the
    worker preloaded."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux counts KiB


def limit_memory(device: Device, max_bytes: int | None) -> None:
    """Cap what torch may allocate on the GPU; allocations past it raise OOM."""
    if not device.is_cuda or max_bytes is None or device.total_bytes is None:
        return
    import torch

    if max_bytes >= device.total_bytes:
        return
    torch.cuda.set_per_process_memory_fraction(max_bytes / device.total_bytes, 0)


class PeakMemory:
    """Peak GPU memory over a block: torch's allocator peak, and what NVML saw
    the process (or, where NVML cannot see our pid, the device) use, which
    includes the CUDA context and allocator slack."""

    def __init__(self, device: Device, interval_s: float = 0.05):
        self.device = device
        self.interval_s = interval_s
        self.torch_peak: int | None = None
        self.nvml_peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.is_cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._thread = threading.Thread(target=self._sample, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.device.is_cuda:
            return
        import torch

        torch.cuda.synchronize()
        self.torch_peak = int(torch.cuda.max_memory_allocated())
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)

    def _sample(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - NVML unavailable: the torch figure stands alone
            return
        try:
            h = pynvml.nvmlDeviceGetHandleByIndex(self.device.index or 0)
            pid = os.getpid()
            base = pynvml.nvmlDeviceGetMemoryInfo(h).used
            peak = 0
            while not self._stop.is_set():
                used = None
                try:
                    for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                        if proc.pid == pid and proc.usedGpuMemory is not None:
                            used = proc.usedGpuMemory
                except pynvml.NVMLError:
                    pass
                if used is None:  # pid namespaces hide us: take the device's growth
                    used = max(0, pynvml.nvmlDeviceGetMemoryInfo(h).used - base)
                peak = max(peak, used)
                self.nvml_peak = peak
                self._stop.wait(self.interval_s)
        finally:
            pynvml.nvmlShutdown()


def is_oom(exc: BaseException) -> bool:
    """Whether `exc` is the GPU running out of memory."""
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def release_memory(device: Device) -> None:
    """Collect what is unreachable and give torch's cached GPU blocks back,
    so the next load (and its measured peak) starts from what is held."""
    import gc

    drop_kept_tracebacks()
    gc.collect()
    if device.is_cuda:
        import torch

        torch.cuda.empty_cache()


def drop_kept_tracebacks() -> int:
    """Free the frames behind exceptions that modules keep in their globals.

    GPTQModel keeps the ImportError of an optional backend (llama_cpp, in
    gptqmodel.nn_modules.qlinear.gguf_cpp) to re-raise later. Its traceback's
    frames chain (f_back) through the import to the from_pretrained call that
    first imported the module, and those frames keep their locals: the first
    packed model loaded in a process stayed alive (7.29 GB of an H200 held by
    a 13B's earlier pass when its serve pass began). The exceptions stay;
    only their tracebacks go. Returns how many were dropped.
    """
    import sys

    dropped = 0
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, BaseException) and value.__traceback__ is not None:
                value.__traceback__ = None
                dropped += 1
    return dropped

