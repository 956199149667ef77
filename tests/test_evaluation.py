"""Loading a checkpoint to measure it, and the evaluators that measure it."""

import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker import evaluators, loading, texts
from worker.evaluators.perplexity import perplexity
from worker.gpu import Device

CPU = Device("cpu", None, "cpu")


def test_perplexity_matches_the_models_own_loss(tiny_model, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 128, 6)
    figures = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 8, tmp_path), tiny_model, tiny_model)

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        losses = [model(torch.tensor([w]), labels=torch.tensor([w])).loss.item() for w in windows]
    assert math.isclose(figures.columns["ppl_baseline"], math.exp(sum(losses) / len(losses)), rel_tol=1e-4)
    assert figures.columns["ppl_ratio"] == 1.0
    assert figures.metrics["eval_tokens"] == 6 * 127
    assert figures.columns["tokens_per_s_baseline"] > 0
    assert figures.columns["eval_peak_vram_bytes"] is None  # CPU


def test_the_models_context_bounds_the_windows(tiny_model):
    from api_client import checkpoint

    assert checkpoint.inspect(tiny_model).context == 512


def test_classic_checkpoints_use_triton_kernels_on_gpus(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    gpu = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    assert loading._loading_options(tmp_path, gpu)["quantization_config"].backend == "triton"
    assert loading._loading_options(tmp_path, CPU) == {}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert loading._loading_options(tmp_path, gpu)["quantization_config"].backend == "gemm_triton"


def test_memory_cap_places_dequantized_checkpoints_by_their_dense_size(tmp_path):
    """Under --max-vram, half the cap holds weights; a compressed-tensors
    artifact, which transformers dequantizes in place to run, gets the share
    its packed weights may take so that, dense, they still fit it."""
    import json

    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.up_proj.weight_packed": torch.zeros(256, 64, dtype=torch.int32)},
              tmp_path / "model.safetensors")  # 64 KiB packed
    dense = 256 * 1024  # the original's weights: 4x the packed bytes
    cap = 10 * 2**30
    for method, share in (("compressed-tensors", cap // 2 // 4), ("bitsandbytes", cap // 2)):
        (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": method}}))
        assert loading.gpu_weight_budget(tmp_path, cap, dense) == share
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert loading.gpu_weight_budget(tmp_path, cap, None) == cap // 2


def test_compressed_tensors_artifact_runs_when_offloaded(tiny_model, tmp_path):
    """Under --max-vram part of a model is offloaded by accelerate; a
    compressed-tensors artifact must still load and run then. (transformers'
    default, dequantizing on the first forward pass, fails there.)"""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype="auto")
    oneshot(model=model, recipe=[QuantizationModifier(targets=["Linear"], scheme="W4A16", ignore=["lm_head"])])
    model.save_pretrained(tmp_path / "artifact", save_compressed=True)
    options = loading._loading_options(tmp_path / "artifact", CPU)
    # A CPU budget too small for any layer: accelerate offloads them all (to disk, the CPU's offload).
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "artifact", dtype=torch.float32, device_map="auto",
                                                     max_memory={"cpu": 300_000}, offload_folder=str(tmp_path / "off"),
                                                     **options)
    ppl, tokens = perplexity(offloaded, [[1, 2, 3, 4, 5, 6, 7, 8]])
    assert tokens == 7 and math.isfinite(ppl)
