"""A compressed-tensors pack-quantized artifact served packed: converted to
the GPTQ layout without loss, run by GPTQModel's kernel, and its weights in
memory a fraction of the original's; a checkpoint with no packed kernel says
`dense` and why."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.support.models import build_tiny_llama
from worker import loading, packing
from worker.gpu import Device

CPU = Device("cpu", None, "cpu")
IDS = torch.tensor([[5, 17, 99, 300, 2, 8, 45, 77, 501, 13, 640, 21]])


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """Linear layers dominate its weights, as in a real LLM (a 1k
    vocabulary against hidden 512 × 4 layers)."""
    return build_tiny_llama(tmp_path_factory.mktemp("wide") / "model", hidden=512, layers=4, intermediate=1536)


def quantize(model_dir, dest, scheme):
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    if not dest.exists():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
        oneshot(model=model, recipe=[QuantizationModifier(targets=["Linear"], scheme=scheme, ignore=["lm_head"])])
        model.save_pretrained(dest, save_compressed=True)
    return dest


def dense_weights(model):
    return {n: m.weight.detach().float() for n, m in model.named_modules() if type(m).__name__ == "Linear" and "layers" in n}


@pytest.mark.parametrize("scheme", ["W4A16", "W4A16_ASYM", "W8A16"])
def test_conversion_is_lossless(wide_model, tmp_path_factory, scheme):
    art = quantize(wide_model, tmp_path_factory.getbasetemp() / f"ct-{scheme}", scheme)
    converted = packing.to_gptq(art, tmp_path_factory.mktemp("conv") / "gptq")
    config = json.loads((converted / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["format"] == "gptq_v2"
    assert config["sym"] == (scheme != "W4A16_ASYM")

    reference = AutoModelForCausalLM.from_pretrained(art, dtype=torch.float16, **loading._loading_options(art, CPU))
    packed = AutoModelForCausalLM.from_pretrained(converted, device_map="cpu")
    assert loading.kernel_of(packed).startswith("gptq-") and loading.kernel_of(reference) == "dense"
    # The weights the kernels compute with equal compressed-tensors' own
    # dequantization, to fp16 rounding of the scales.
    expected = dense_weights(reference)
    for name, module in packed.named_modules():
        if name in expected:
            got = module.dequantize_weight().T.float() if hasattr(module, "dequantize_weight") else None
            assert got is not None, f"{name} is not packed ({type(module).__name__})"
            torch.testing.assert_close(got, expected[name], rtol=2e-3, atol=1e-4)
    # And the logits: both in fp16 on the same input.
    with torch.no_grad():
        a, b = reference(IDS).logits.float(), packed(IDS).logits.float()
    assert (a - b).abs().max() <= 0.02 * a.abs().max()


def test_packed_w4_weights_are_a_third_of_fp16(wide_model, tmp_path_factory, tmp_path):
    art = quantize(wide_model, tmp_path_factory.getbasetemp() / "ct-W4A16", "W4A16")
    original = loading.load_for_serving(wide_model, CPU, None, tmp_path)
    served = loading.load_for_serving(art, CPU, None, tmp_path)
    assert original.kernel == "dense" and served.kernel.startswith("gptq-")
    fp16 = loading.held_bytes(original.model)
    params = sum(p.numel() for p in original.model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in original.model.buffers())  # rotary frequencies
    assert fp16 == 2 * params + buffers  # fp16, every weight once
    assert loading.held_bytes(served.model) <= 0.35 * fp16


def test_fp8_on_a_cpu_serves_dense_and_says_why(tiny_model, tmp_path):
    art = quantize(tiny_model, tmp_path / "fp8", "FP8_DYNAMIC")
    with pytest.raises(packing.NotConvertible, match="float-quantized|activations"):
        packing.to_gptq(art, tmp_path / "no")
    served = loading.load_for_serving(art, CPU, None, tmp_path)
    assert served.kernel == "dense" and "8.9" in served.dense_reason


def test_bitsandbytes_path_is_named_from_the_loaded_modules(tiny_model, tmp_path):
    from transformers import BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_model, device_map="cpu", quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True))
    assert loading.kernel_of(model) == "bnb-nf4"
    dense = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float16)
    linear = sum(m.weight.numel() for n, m in dense.named_modules() if "layers" in n and type(m).__name__ == "Linear")
    # 4 bits a weight, plus the absmax scales bitsandbytes keeps beside them.
    assert loading.held_bytes(dense) - loading.held_bytes(model) >= 1.5 * linear * 0.9


def test_a_jobs_serve_figures_come_from_the_packed_path_and_match_its_reference(wide_model, tmp_path_factory, tmp_path):
    """Through the evaluators, as a job runs them: the artifact's serve pass
    runs packed, names its kernel, holds a third of the original's weights,
    and computes the perplexity the dequantized reference load computes."""
    from transformers import AutoTokenizer

    from worker import evaluators, texts
    from worker.evaluators.serving import SERVE_WINDOWS

    art = quantize(wide_model, tmp_path_factory.getbasetemp() / "ct-W4A16", "W4A16")
    tok = AutoTokenizer.from_pretrained(wide_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 128, SERVE_WINDOWS)
    figures = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 4, tmp_path), wide_model, art)
    c, m = figures.columns, figures.metrics
    assert c["serve_kernel"].startswith("gptq-") and m["serve_kernel_baseline"] == "dense"
    assert c["weights_bytes"] <= 0.35 * c["weights_bytes_baseline"]
    assert m["serve_perplexity"] == pytest.approx(c["ppl_quantized"], rel=0.01)
    assert m["serve_perplexity_baseline"] == pytest.approx(c["ppl_baseline"], rel=0.01)
    assert c["serve_tokens_per_s"] > 0 and m["serve_offloaded"] is False


def test_a_cap_too_small_for_the_dequantized_artifact_measures_it_packed(wide_model, tmp_path_factory, tmp_path,
                                                                         monkeypatch):
    """Under --max-vram, a compressed-tensors artifact whose dequantized
    weights exceed the GPU half of the cap is measured on its packed load
    (compressed-tensors dequantizing an offloaded 13B model ran out of a
    16 GiB cap): the figures name that load and its perplexity is the
    dequantized load's."""
    import json

    from transformers import AutoTokenizer

    from worker import evaluators, texts

    art = quantize(wide_model, tmp_path_factory.getbasetemp() / "ct-W4A16", "W4A16")
    h100 = Device("cuda", 0, "NVIDIA H100 80GB HBM3", (9, 0), 80 * 2**30)
    dense_13b, cap = int(24.2 * 2**30), 16 * 2**30
    assert "exceed the GPU half of the 16.0 GiB cap" in loading.packed_reference_reason(art, h100, cap, dense_13b)
    assert loading.packed_reference_reason(art, h100, cap, 7 * 2**30) is None  # fits dequantized
    assert loading.packed_reference_reason(art, h100, None, dense_13b) is None  # no cap
    assert loading.packed_reference_reason(art, CPU, cap, dense_13b) is None  # a CPU has no cap
    classic = tmp_path / "classic"
    classic.mkdir()
    (classic / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq", "bits": 4}}))
    assert loading.packed_reference_reason(classic, h100, cap, dense_13b) is None  # packed already

    tok = AutoTokenizer.from_pretrained(wide_model)
    windows = texts.token_windows(tok, texts.builtin_text("eval"), 128, 4)
    dequantized = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "a"), wide_model, art)
    # The cap's decision, on a CPU (where no cap applies).
    monkeypatch.setattr(loading, "packed_reference_reason", lambda *a: "the test's cap")
    packed = evaluators.run(evaluators.Inputs(CPU, tok, windows, None, 0, tmp_path / "b"), wide_model, art)
    assert dequantized.metrics["ppl_kernel"] == "dense" and packed.metrics["ppl_kernel"].startswith("gptq-")
    assert packed.metrics["ppl_packed_instead"] == "the test's cap" and dequantized.metrics["ppl_packed_instead"] is None
    assert packed.metrics["eval_passes"]["quantized_reference"]["kernel"] == packed.metrics["ppl_kernel"]
    assert packed.metrics["ppl_kernel_baseline"] == "dense"
    assert packed.columns["ppl_quantized"] == pytest.approx(dequantized.columns["ppl_quantized"], rel=0.01)
    assert packed.columns["ppl_baseline"] == dequantized.columns["ppl_baseline"]


def test_a_packed_load_is_freed_when_its_pass_ends(wide_model, tmp_path_factory, tmp_path):
    """In a fresh process (the first GPTQModel import is the one that kept
    it): the first packed model loaded is gone once released, so the next
    pass's memory starts from nothing. GPTQModel's kept ImportError held the
    frames of that import, and with them the model."""
    import subprocess
    import sys

    art = quantize(wide_model, tmp_path_factory.getbasetemp() / "ct-W4A16", "W4A16")
    script = f"""
import weakref
from pathlib import Path
from worker import loading
from worker.gpu import Device, release_memory
cpu = Device("cpu", None, "cpu")
served = loading.load_for_serving(Path({str(art)!r}), cpu, None, Path({str(tmp_path)!r}))
assert served.kernel.startswith("gptq-"), served.kernel
alive = weakref.ref(served.model)
del served
release_memory(cpu)
print("ALIVE" if alive() is not None else "FREED")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1:] == ["FREED"], out.stderr[-2000:]


@pytest.mark.parametrize("scheme", ["W4A16_ASYM", "W8A16"])
def test_the_gptq_layout_dequantizes_to_the_weights_compressed_tensors_holds(wide_model, tmp_path_factory, scheme):
    """packing.dequantize, the layout's definition the kernels are checked
    against, gives compressed-tensors' own dense weights from the converted
    files (v2 zero points, and v1's z − 1 read back the same)."""
    art = quantize(wide_model, tmp_path_factory.getbasetemp() / f"ct-{scheme}", scheme)
    converted = packing.to_gptq(art, tmp_path_factory.mktemp("conv") / "gptq")
    expected = dense_weights(AutoModelForCausalLM.from_pretrained(art, dtype=torch.float16,
                                                                  **loading._loading_options(art, CPU)))
    bits = 4 if scheme.startswith("W4") else 8
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj"):
        tensors = packing.read_layer(converted, name)
        torch.testing.assert_close(packing.dequantize(tensors, bits, "gptq_v2"), expected[name], rtol=2e-3, atol=1e-4)
        # The same layer stored as classic GPTQ (v1) keeps each zero point minus one.
        mask, shifts = (1 << bits) - 1, torch.arange(32 // bits, dtype=torch.int64) * bits
        zeros = (tensors["qzeros"].long().unsqueeze(2) >> shifts) & mask
        v1 = (((zeros - 1) & mask) << shifts).sum(-1)
        tensors["qzeros"] = torch.where(v1 >= 2**31, v1 - 2**32, v1).to(torch.int32)
        torch.testing.assert_close(packing.dequantize(tensors, bits, "gptq"), expected[name], rtol=2e-3, atol=1e-4)


def test_a_kernel_that_computes_wrong_is_not_used(wide_model, tmp_path_factory, tmp_path, monkeypatch):
    """The serve load checks the kernel on a layer against the checkpoint's
    dense product before any figure is taken on it: one that loads but
    computes wrong is refused, the load runs dense, and the reason names
    the kernel and what differed."""
    art = quantize(wide_model, tmp_path_factory.getbasetemp() / "ct-W4A16", "W4A16")
    good = loading.load_for_serving(art, CPU, None, tmp_path / "a")
    assert good.kernel.startswith("gptq-") and good.kernel_trials[-1]["result"].startswith("validated on model.layers.0.")
    kernel_class = type(next(m for m in good.model.modules() if hasattr(m, "qweight")))
    forward = kernel_class.forward
    monkeypatch.setattr(kernel_class, "forward", lambda self, x: forward(self, x) * 1.05)  # 5 % off
    with pytest.raises(packing.WrongOutput, match="differs from the checkpoint's dense product"):
        packing.check_kernel(good.model, tmp_path / "a" / "serve-gptq")
    bad = loading.load_for_serving(art, CPU, None, tmp_path / "b")
    assert bad.kernel == "dense" and "wrong output" in bad.dense_reason and "differs from the checkpoint" in bad.dense_reason
    # A checkpoint whose layer cannot be read (names transformers changed): not checked, and said so.
    (tmp_path / "renamed").mkdir()
    (tmp_path / "renamed" / "config.json").write_text((tmp_path / "a" / "serve-gptq" / "config.json").read_text())
    assert packing.check_kernel(good.model, tmp_path / "renamed").startswith("not checked: model.layers.0.")
    # A kernel that raises is refused the same way.
    monkeypatch.setattr(kernel_class, "forward", lambda self, x: (_ for _ in ()).throw(RuntimeError("no kernel image")))
    with pytest.raises(packing.WrongOutput, match="the kernel raised RuntimeError: no kernel image"):
        packing.check_kernel(good.model, tmp_path / "a" / "serve-gptq")
