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
