"""Perplexity and decode speed, measured on a checkpoint loaded from disk."""

import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from worker import evaluation, texts
from worker.gpu import Device

CPU = Device("cpu", None, "cpu")


def test_perplexity_matches_the_models_own_loss(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 128, 6)
    result = evaluation.evaluate(tiny_model, windows, CPU, None, decode_tokens=8)

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        losses = [model(torch.tensor([w]), labels=torch.tensor([w])).loss.item() for w in windows]
    assert math.isclose(result.perplexity, math.exp(sum(losses) / len(losses)), rel_tol=1e-4)
    assert result.tokens == 6 * 127 and result.windows == 6
    assert result.tokens_per_s > 0
    assert result.peak_vram_bytes is None  # CPU


def test_default_window_is_the_context_capped_at_2048(tiny_model):
    assert evaluation.default_seqlen(tiny_model) == 512


def test_classic_checkpoints_use_triton_kernels_on_gpus(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    gpu = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    assert evaluation._kernel_choice(tmp_path, gpu)["quantization_config"].backend == "triton"
    assert evaluation._kernel_choice(tmp_path, CPU) == {}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert evaluation._kernel_choice(tmp_path, gpu)["quantization_config"].backend == "gemm_triton"


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
        assert evaluation.gpu_weight_budget(tmp_path, cap, dense) == share
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert evaluation.gpu_weight_budget(tmp_path, cap, None) == cap // 2
