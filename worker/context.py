"""What a method's `quantize` gets: where the model is, where the artifact
goes, the device, the calibration spec, and hooks to report stages and time
the library call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from api_client.errors import QFarmError
from api_client.spec import CalibSpec
from api_client.states import Stage
from worker import texts
from worker.gpu import Device

GiB = 2**30


@dataclass
class JobContext:
    job_id: str
    model_dir: Path
    output_dir: Path
    scratch_dir: Path
    device: Device
    calib: CalibSpec | None
    max_vram_bytes: int | None
    weights: str
    model_bytes: int
    # Whether libraries may run the model's own code (the job allows it and
    # this worker was started with --allow-remote-code).
    trust_remote_code: bool
    on_stage: Callable[[Stage, str | None], None]
    on_note: Callable[[str], None]
    library_seconds: float = 0.0
    facts: dict = field(default_factory=dict)

    def stage(self, stage: Stage, message: str | None = None) -> None:
        self.on_stage(stage, message)

    def note(self, message: str) -> None:
        self.on_note(message)

    @contextmanager
    def library_call(self) -> Iterator[None]:
        """Time the quantization library's own work: loading the weights into
        it, quantizing, writing the artifact (what qfarm's overhead is
        measured against)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.library_seconds += time.perf_counter() - start

    def gpu_budget(self) -> int | None:
        total = self.device.total_bytes
        if not self.device.is_cuda or total is None:
            return None
        return min(self.max_vram_bytes or total, total)

    def weights_on_gpu(self) -> bool:
        """Whether the full-precision weights go on the GPU while quantizing.

        `auto` puts them there when they fit with room for activations and the
        quantizer's state; otherwise they stay in CPU memory and are onloaded
        one layer at a time (slower, but a model larger than the GPU fits).
        """
        if not self.device.is_cuda or self.weights == "cpu":
            return False
        if self.weights == "gpu":
            return True
        budget = self.gpu_budget()
        return budget is not None and self.model_bytes * 1.25 + 2 * GiB <= budget

    def calibration_windows(self, tokenizer) -> list[list[int]]:
        if self.calib is None:
            raise QFarmError("this method needs calibration data but the job has none")
        text = texts.load_text(self.calib.source, "calib",
                               max_chars=self.calib.samples * self.calib.seqlen * 12)
        windows = texts.token_windows(tokenizer, text, self.calib.seqlen, self.calib.samples)
        if not windows:
            raise QFarmError(f"calibration text {self.calib.source} is shorter than one window of {self.calib.seqlen} tokens")
        self.facts["calib_samples_used"] = len(windows)
        self.facts["calib_seqlen"] = self.calib.seqlen
        if len(windows) < self.calib.samples:
            self.note(f"calibration text holds only {len(windows)} windows of {self.calib.seqlen} tokens; using those, not {self.calib.samples}")
        return windows
