"""GPTQModel: GPTQ and AWQ into the classic checkpoint formats (AutoGPTQ's
`gptq`, AutoAWQ's `gemm`), for engines and users of those formats."""

from __future__ import annotations

import os
from typing import Any

from api_client.states import Stage


def _cpu_workers() -> None:
    # GPTQModel sizes its CPU thread pool to half the cores; with one worker
    # thread on a small machine its pipeline stalls, so ask for at least two.
    if "GPTQMODEL_CPU_WORKERS" not in os.environ:
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, (os.cpu_count() or 2) // 2))


def quantize(ctx, *, method: str, checkpoint_format: str, bits: int, group_size: int, sym: bool, **extra: Any) -> None:
    _cpu_workers()
    from gptqmodel import BACKEND, GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ctx.model_dir, trust_remote_code=ctx.trust_remote_code)
    ctx.stage(Stage.CALIBRATING)
    windows = ctx.calibration_windows(tokenizer)
    calibration = [{"input_ids": w, "attention_mask": [1] * len(w)} for w in windows]
    offload = ctx.scratch_dir / "gptqmodel-offload"
    config = QuantizeConfig(
        bits=bits, group_size=group_size, method=method, format=checkpoint_format, sym=sym,
        desc_act=False, offload_to_disk=True, offload_to_disk_path=str(offload), **extra,
    )
    # On the CPU only the torch kernels exist; AWQ's must be named.
    backend = BACKEND.AUTO
    if not ctx.device.is_cuda and method == "awq":
        backend = BACKEND.TORCH_AWQ
    ctx.facts["weights_on"] = "cpu"  # GPTQModel keeps weights on the CPU and moves a layer at a time
    ctx.stage(Stage.QUANTIZING, f"GPTQModel, {checkpoint_format} format")
    with ctx.library_call():
        model = GPTQModel.load(str(ctx.model_dir), config, device=ctx.device.torch_device,
                               trust_remote_code=ctx.trust_remote_code)
        model.quantize(calibration, batch_size=1, backend=backend)
        model.save(str(ctx.output_dir))
    tokenizer.save_pretrained(ctx.output_dir)
    # The run log is GPTQModel's, not part of the model.
    (ctx.output_dir / "quant_log.csv").unlink(missing_ok=True)
    _forget_path(ctx.output_dir, str(offload))


def _forget_path(output_dir, path: str) -> None:
    """GPTQModel writes its offload directory, a path inside the job's
    scratch directory (named by the job id), into config.json and
    quantize_config.json. A path of the worker is no part of the model, and
    it made two runs of the same job differ: it is removed (GPTQModel reads
    the configs back without it)."""
    import json

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if v != path}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    for name in ("config.json", "quantize_config.json"):
        file = output_dir / name
        if file.exists():
            data = json.loads(file.read_text())
            cleaned = scrub(data)
            if cleaned != data:
                file.write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n")
