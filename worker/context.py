"""What a method's `quantize` gets: where the model is, where the artifact
goes, the device, the calibration spec, and hooks to report stages and time
the library call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_client.contract.spec import CalibSpec
from api_client.contract.states import Stage
from api_client.errors import QFarmError
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
    # The checkpoint's config.json, as the job read it (checkpoint.inspect).
    model_config: dict[str, Any]
    on_stage: Callable[[Stage, str | None], None]
    on_note: Callable[[str], None]
    library_seconds: float = 0.0
    facts: dict = field(default_factory=dict)
    # The files the evaluation measures, by label, where an artifact holds
    # several models (a GGUF job: one file per format, the first its
    # headline); empty: the artifact directory is the one model.
    targets: dict[str, Path] = field(default_factory=dict)

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

    def model_dtype(self) -> Any:
        """The torch dtype the checkpoint was saved in (config.json)."""
        import torch

        config = self.model_config
        return getattr(torch, str(config.get("dtype") or config.get("torch_dtype") or "float16"), torch.float16)

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
        # The runner resolved the worker's defaults into the spec (runner._calib).
        source, samples, seqlen = self.calib.source, self.calib.samples, self.calib.seqlen
        assert samples is not None and seqlen is not None
        text = texts.load_text(source, "calib", max_chars=samples * seqlen * 12)
        windows = texts.token_windows(tokenizer, text, seqlen, samples)
        if not windows:
            raise QFarmError(f"calibration text {source} is shorter than one window of {seqlen} tokens")
        self.facts["calib_samples_used"] = len(windows)
        self.facts["calib_seqlen"] = seqlen
        if len(windows) < samples:
            self.note(f"calibration text holds only {len(windows)} windows of {seqlen} tokens; using those, not {samples}")
        return windows
