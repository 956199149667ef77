"""GPTQModel: GPTQ and AWQ into the classic checkpoint formats (AutoGPTQ's
`gptq`, AutoAWQ's `gemm`), for engines and users of those formats."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from api_client.contract.states import Stage


def _cpu_workers() -> None:
    # GPTQModel sizes its CPU thread pool to half the cores; with one worker
    # thread on a small machine its pipeline stalls, so ask for at least two.
    if "GPTQMODEL_CPU_WORKERS" not in os.environ:
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, (os.cpu_count() or 2) // 2))


@contextmanager
def _transformers_restored(model_type: str | None) -> Iterator[None]:
    """Undo what GPTQModel changes in transformers for the rest of the
    process. To quantize a mixture of experts it has `defuser` replace the
    architecture's sparse-MoE block class in its modeling module and
    transformers' checkpoint-conversion lookup, for good: every later load
    of that architecture in the process was built defused (in a worker, the
    job's own evaluation of the original model; in the tests, every later
    job). Module attributes of transformers that the call replaced are put
    back."""
    if model_type:
        with suppress(ImportError):
            importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    saved = {name: dict(vars(module)) for name, module in list(sys.modules.items())
             if module is not None and name.startswith("transformers")}
    try:
        yield
    finally:
        for name, before in saved.items():
            module = sys.modules.get(name)
            if module is None:
                continue
            now = vars(module)
            for key, value in before.items():
                if now.get(key) is not value:
                    setattr(module, key, value)


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
    with ctx.library_call(), _transformers_restored(ctx.model_config.get("model_type")):
        model = GPTQModel.load(str(ctx.model_dir), config, device=ctx.device.torch_device,
                               trust_remote_code=ctx.trust_remote_code)
        model.quantize(calibration, batch_size=1, backend=backend)
        model.save(str(ctx.output_dir))
    tokenizer.save_pretrained(ctx.output_dir)
    # The run log is GPTQModel's, not part of the model.
    (ctx.output_dir / "quant_log.csv").unlink(missing_ok=True)
    _forget_path(ctx.output_dir, str(offload))
    name_packed_modules(ctx.output_dir)


def name_packed_modules(artifact) -> None:
    """Say in the config which layers of the blocks are packed, where
    GPTQModel did not: without it transformers loads every nn.Linear of a
    block as a packed layer, and a Qwen2-MoE's `shared_expert_gate` (one
    output, kept in full precision) failed to load ("index 1 is out of
    bounds for dimension 0 with size 1"). GPTQ configs name the packed ones
    (`modules_in_block_to_quantize`), AWQ configs the others
    (`modules_to_not_convert`)."""
    import json

    from api_client.contract.checkpoint import read_safetensors_header
    from worker.packing import split_block

    config_path = artifact / "config.json"
    config = json.loads(config_path.read_text())
    qc = config.get("quantization_config") or {}
    packed, dense = set(), set()
    for shard in artifact.glob("*.safetensors"):
        for name, meta in read_safetensors_header(shard).items():
            module, _, leaf = name.rpartition(".")
            block, _, relative = split_block(module)
            if block and leaf == "qweight":
                packed.add(relative)
            elif block and leaf == "weight" and len(meta["shape"]) == 2:
                dense.add(relative)
    if qc.get("quant_method") == "awq":
        if dense and not qc.get("modules_to_not_convert"):
            qc["modules_to_not_convert"] = sorted(dense)
    elif packed and not qc.get("modules_in_block_to_quantize"):
        qc["modules_in_block_to_quantize"] = [sorted(packed)]
    config["quantization_config"] = qc
    config_path.write_text(json.dumps(config, indent=2))



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
