"""Loading a checkpoint to measure it, and the evaluators that measure it."""

import math

import pytest
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
    # A CPU times generation eagerly on the static cache, and says so.
    c, m = figures.columns, figures.metrics
    assert c["serve_method"] == "hf-static-eager" and m["serve_batch"]["shape"] == "2x8+4"
    assert c["serve_batch_tokens_per_s"] > 0 and c["serve_prefill_tokens_per_s"] > 0
    assert m["serve_decode"]["repeats"] == 2 and m["serve_decode"]["decode_tokens_per_s_sd"] is not None


def test_the_static_cache_decode_generates_what_generate_does(tiny_model):
    """The timed loop (a static KV cache, one step a token, the greedy token
    fed back) produces transformers' greedy generation, row by row."""
    from worker import serve_speed

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompt = texts.token_windows(tok, texts.builtin_text("eval"), 16, 1)[0]
    timing = serve_speed.measure(model, prompt, 12, batch=2)
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt] * 2), attention_mask=torch.ones(2, 16, dtype=torch.long),
                                  max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=2)
    assert timing.tokens == expected[:, 16:].tolist()
    assert timing.method == "hf-static-eager" and timing.fallback is None and len(timing.decode_s) == 2
    summary = timing.summary()
    assert summary["decode_tokens_per_s"] == pytest.approx(sum(2 * 11 / s for s in timing.decode_s) / 2)
    assert summary["shape"] == "2x16+12"

    # A model that cannot decode on a static cache is timed with generate, named, with the reason.
    import transformers

    def refuse(*args, **kwargs):
        raise NotImplementedError("this model keeps a cache of its own")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers, "StaticCache", refuse)
        fallback = serve_speed.measure(model, prompt, 12, batch=2)
    assert fallback.method == "hf-generate" and "this model keeps a cache of its own" in fallback.fallback
    assert fallback.tokens == expected[:, 16:].tolist() and fallback.summary()["decode_tokens_per_s"] > 0


def test_the_models_context_bounds_the_windows(tiny_model):
    from api_client.contract import checkpoint

    assert checkpoint.inspect(tiny_model).context == 512


def test_classic_checkpoints_use_triton_kernels_on_gpus(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    gpu = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    assert loading._loading_options(tmp_path, gpu)["quantization_config"].backend == "triton"
    assert loading._loading_options(tmp_path, CPU) == {}
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert loading._loading_options(tmp_path, gpu)["quantization_config"].backend == "gemm_triton"


def test_gptq_kernels_are_tried_fastest_first_where_they_apply():
    """Marlin first on compute capability 8.0+ for symmetric weights, unless
    layers may be offloaded (it repacks at load); then Triton, then torch;
    GPTQModel's own choice on a CPU."""
    h100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    t4 = Device("cuda", 0, "Tesla T4", (7, 5), 16 * 2**30)
    assert loading.gptq_backends(h100, {"sym": True}) == ["gptq_marlin", "gptq_triton", "gptq_torch"]
    assert loading.gptq_backends(h100, {"sym": False}) == ["gptq_triton", "gptq_torch"]
    assert loading.gptq_backends(h100, {"sym": True}, may_offload=True) == ["gptq_triton", "gptq_torch"]
    assert loading.gptq_backends(t4, {"sym": True}) == ["gptq_triton", "gptq_torch"]
    assert loading.gptq_backends(CPU, {"sym": True}) == ["auto"]


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


def noisy_copy(model_dir, dest, scale=1.0):
    """The model with every linear weight perturbed: a stand-in for an
    artifact whose next-token distribution moved a measurable amount."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=generator) * scale * p.abs().mean())
    model.to(torch.float16).save_pretrained(dest)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dest)
    return dest


def reference_kl(original, artifact, windows):
    """KL(original ‖ artifact) per predicted token, both models in memory in fp32."""
    a = AutoModelForCausalLM.from_pretrained(original, dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32)
    ids = torch.tensor(windows)
    with torch.no_grad():
        p, q = a(ids).logits[:, :-1].log_softmax(-1), b(ids).logits[:, :-1].log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1).flatten()


def perplexity_figures(original, artifact, inputs):
    """The perplexity evaluator alone, on both models' reference loads."""
    from worker.evaluators.perplexity import Perplexity

    evaluator, load = Perplexity(), {"peak_vram_bytes": None, "peak_vram_nvml_bytes": None}
    base = evaluator.measure(evaluators.Loaded(loading.load(original, CPU, None), "baseline", "dense"), inputs, load)
    quant = evaluator.measure(evaluators.Loaded(loading.load(artifact, CPU, None), "quantized", "dense"), inputs, load)
    return evaluator.figures(base, quant)


def test_kl_divergence_and_the_ratios_interval(tiny_model, tmp_path, monkeypatch):
    """The artifact's KL divergence from the original is the one computed
    with both models in memory (the original's log-probabilities went
    through the scratch disk as fp16), over the tokens it says; the same
    model gives none. The perplexity ratio's interval holds the ratio, and
    is a point for the same model on both sides."""
    from worker.evaluators import divergence

    art = noisy_copy(tiny_model, tmp_path / "noisy")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 64, 4)
    figures = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "a"), tiny_model, art)
    c, m = figures.columns, figures.metrics
    expected = reference_kl(tiny_model, art, windows)
    assert m["kl_tokens"] == 4 * 63 and c["kl_divergence"] > 1e-3
    assert c["kl_divergence"] == pytest.approx(float(expected.mean()), rel=0.02)
    assert c["kl_divergence_p99"] == pytest.approx(float(expected.quantile(0.99)), rel=0.05)
    assert m["kl_interval"][0] <= c["kl_divergence"] <= m["kl_interval"][1]
    assert c["ppl_ratio_low"] < c["ppl_ratio"] < c["ppl_ratio_high"]

    same = perplexity_figures(tiny_model, tiny_model, evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "b"))
    # (A random model's near-ties can swap under fp16 rounding of the stored side.)
    assert same.columns["kl_divergence"] < 1e-4 and same.metrics["kl_same_top"] > 0.95
    assert same.columns["ppl_ratio_low"] == same.columns["ppl_ratio_high"] == 1.0

    # The disk cap bounds the tokens covered, and the figure says how many.
    monkeypatch.setattr(divergence, "MAX_BYTES", 100 * 2 * len(tok))
    capped = perplexity_figures(tiny_model, art, evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "c"))
    assert capped.metrics["kl_tokens"] == 100
    assert capped.columns["kl_divergence"] == pytest.approx(float(expected[:100].mean()), rel=0.02)


def test_a_model_partly_in_cpu_memory_is_not_timed_at_batch_16(tiny_model, tmp_path):
    """Under --max-vram an offloaded model streams its weights in for every
    step: its batched figure says so instead of taking minutes."""
    from worker.evaluators import serving

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    inputs = evaluators.Inputs(CPU, tok, texts.token_windows(tok, texts.builtin_text("eval"), 64, 1), None, 0, tmp_path)
    offloaded = serving._batched(evaluators.Loaded(model, "quantized", "dense", offloaded=True), inputs)
    assert offloaded == {"shape": "2x8+4", "error": "not measured: weights offloaded to CPU memory would stream in for every step"}
    assert serving._batched(evaluators.Loaded(model, "quantized", "dense"), inputs)["tokens_per_s"] > 0
