"""The support matrix, proven: every (architecture, method) pair of the
catalog's table (api_client/contract/catalog/architectures.py) on a tiny random
checkpoint built here from transformers' own config classes.

A pair the table says works is submitted (accepted), quantized in-process
by the method's own code (as the worker's job runs it), and its artifact is
read back: at least 95 % of the decoder's linear and expert weights stored
quantized (worker/coverage.py), every router and shared-expert gate stored
as it was, and the artifact loads and computes what the original does, to
quantization error. A pair it refuses is refused by `submit` with the
table's one line. `qfarm methods --architectures` and docs/methods.md print the
same table, so what they say is what ran here.

Shapes are tiny but valid for every method: hidden 128 (group 128 divides
every input), 2 layers, 4 experts, 1-2 calibration windows of 32 tokens; no
evaluation pass; one torch thread. The whole matrix (144 pairs then, 119 of them
quantized; 160 with gguf's column, 3 of those quantized) took 82 s of CPU and 2 min 3 s on two cores under pytest-xdist
(`-n 2`); most of it is importing llm-compressor and GPTQModel once per
worker. `-m "not matrix"` leaves it out.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from api_client.contract.catalog import architectures
from api_client.contract.catalog.architectures import METHOD_LABELS, TABLE
from api_client.contract.checkpoint import read_safetensors_header
from api_client.contract.spec import CalibSpec, JobSpec, resolve
from api_client.errors import SpecError

# Every checkpoint: a 1k vocabulary (the tokenizer of conftest's tiny Llama),
# hidden 128, 2 layers. Per architecture, what its config needs beyond that
# (MoE: 4 experts, 2 a token; DeepSeek-V3: its first layer dense, MLA ranks
# of 128 so group 128 divides kv_b_proj's inputs).
COMMON = dict(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512,
              bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(intermediate_size=256, num_key_value_heads=4)),
    "mistral": ("MistralConfig", dict(intermediate_size=256, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(intermediate_size=256, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(intermediate_size=256, num_key_value_heads=2, head_dim=32)),
    "gemma2": ("Gemma2Config", dict(intermediate_size=256, num_key_value_heads=2, head_dim=32)),
    "gemma3_text": ("Gemma3TextConfig", dict(intermediate_size=256, num_key_value_heads=2, head_dim=32)),
    "phi3": ("Phi3Config", dict(intermediate_size=256, num_key_value_heads=4)),
    "olmo2": ("Olmo2Config", dict(intermediate_size=256, num_key_value_heads=4)),
    "granite": ("GraniteConfig", dict(intermediate_size=256, num_key_value_heads=4)),
    "gpt_neox": ("GPTNeoXConfig", dict(intermediate_size=512)),
    "falcon": ("FalconConfig", dict(new_decoder_architecture=True, num_kv_heads=2)),
    "mixtral": ("MixtralConfig", dict(intermediate_size=128, num_key_value_heads=2, num_local_experts=4,
                                      num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=256, moe_intermediate_size=128, num_key_value_heads=2,
                                         shared_expert_intermediate_size=128, num_experts=4, num_experts_per_tok=2)),
    "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=256, moe_intermediate_size=128, num_key_value_heads=2,
                                         num_experts=4, num_experts_per_tok=2, head_dim=32)),
    "deepseek_v3": ("DeepseekV3Config", dict(intermediate_size=256, moe_intermediate_size=128, num_key_value_heads=4,
                                             n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1,
                                             topk_group=1, first_k_dense_replace=1, kv_lora_rank=128, q_lora_rank=128,
                                             qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=32)),
    "gpt_oss": ("GptOssConfig", dict(intermediate_size=128, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2, head_dim=32)),
}

CASES = [(arch, label) for arch in TABLE for label in METHOD_LABELS]


def test_the_table_covers_the_issue_architectures_and_every_method():
    from api_client.contract import catalog

    assert set(TABLE) == set(CONFIGS)
    assert {label.split(":")[0] for label in METHOD_LABELS} == set(catalog.names())
    for label in METHOD_LABELS:
        method, _, fmt = label.partition(":")
        assert catalog.label_of(method, fmt or None) == label


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tiny_model):
    """Tiny random checkpoints, one per architecture, built on first use,
    with the tiny Llama's tokenizer."""
    root = tmp_path_factory.mktemp("architectures")

    def build(model_type: str) -> Path:
        dest = root / model_type
        if (dest / "config.json").exists():
            return dest
        import torch
        import transformers

        config_class, extra = CONFIGS[model_type]
        config = getattr(transformers, config_class)(**{**COMMON, **extra})
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
        model.save_pretrained(dest)
        for f in tiny_model.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(f, dest / f.name)
        return dest

    return build


@pytest.fixture(autouse=True, scope="module")
def one_thread_each():
    """One torch thread: under pytest-xdist two workers share two cores, and
    torch's threads spinning against each other made a tiny AWQ take 22.7 s
    where one thread took 2.3 s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def spec_for(model: Path, label: str) -> JobSpec:
    method, _, fmt = label.partition(":")
    calibrated = method in ("gptq", "awq", "gguf")
    return JobSpec(model=str(model), method=method, format=fmt or None,
                   calib=CalibSpec(samples=2, seqlen=32) if calibrated else None)


def quantize(model: Path, label: str, out: Path) -> dict:
    """The method's own code, as the job runs it (runner.Run._run); the
    facts it recorded."""
    from api_client.contract import catalog
    from worker.context import JobContext
    from worker.gpu import Device

    spec = spec_for(model, label)
    resolved = resolve(spec)
    out.mkdir(parents=True)
    ctx = JobContext(
        job_id="matrix", model_dir=model, output_dir=out, scratch_dir=out.parent, device=Device("cpu", None, "cpu"),
        calib=resolved.calib, max_vram_bytes=None, weights="auto", model_bytes=resolved.model_bytes or 0,
        trust_remote_code=False, model_config=json.loads((model / "config.json").read_text()),
        on_stage=lambda *a: None, on_note=lambda m: None)
    params = catalog.get(resolved.method).parse_params(resolved.params, resolved.format)
    # GPTQModel writes its logs relative to the working directory; the job
    # runs in its own (runner.execute).
    cwd = os.getcwd()
    os.chdir(out.parent)
    try:
        run(ctx, resolved, params)
    finally:
        os.chdir(cwd)
    return ctx.facts


def run(ctx, resolved, params) -> None:
    from worker import methods

    if resolved.method == "fp8":
        # FP8 computes on GPUs only (the method refuses a CPU worker), but
        # llm-compressor quantizes it on a CPU: the test calls what the
        # method calls, without its GPU check.
        from worker.engines import llm_compressor

        llm_compressor.quantize(ctx, llm_compressor.Recipe(None, llm_compressor.fp8_dynamic_scheme()), calibrated=False)
    else:
        methods.quantize(resolved.method, ctx, params, resolved.format)


def tensors(checkpoint: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for shard in checkpoint.glob("*.safetensors"):
        out.update(read_safetensors_header(shard))
    return out


def logits(path: Path):
    import torch

    from worker import loading
    from worker.gpu import Device

    ids = torch.tensor([[5, 17, 99, 300, 2, 8, 45, 77, 501, 13, 640, 21]])
    model = loading.load(path, Device("cpu", None, "cpu"), None)
    with torch.inference_mode():
        return model(ids).logits.float()


@pytest.mark.matrix
@pytest.mark.parametrize("arch,label", [pytest.param(a, m, id=f"{a}-{m}") for a, m in CASES])
def test_support_matrix(checkpoints, tmp_path, arch, label):
    model = checkpoints(arch)
    if not TABLE[arch].works(label):
        with pytest.raises(SpecError) as refused:
            resolve(spec_for(model, label))
        assert str(refused.value) == architectures.refusal(arch, label)
        assert TABLE[arch].name in str(refused.value) and ", ".join(TABLE[arch].working()) in str(refused.value)
        return

    from worker import coverage

    out = tmp_path / "artifact"
    facts = quantize(model, label, out)
    if label.startswith("gguf"):
        check_gguf(model, out, label)
        return
    reached = coverage.measure(out, model)
    assert reached.problem(label) is None, reached.problem(label)
    assert reached.fraction >= 0.95 and reached.eligible_params > 0

    # Routers and shared-expert gates: stored as they were (under the
    # artifact's names for them: GPTQModel writes transformers' own), read
    # from the artifact's header.
    def routers(header: dict) -> dict:
        return {n: m for n, m in header.items()
                if n.endswith(".weight") and architectures.keeps_full_precision(arch, n.removesuffix(".weight"))}

    before, after = tensors(model), tensors(out)
    assert bool(routers(before)) == TABLE[arch].moe
    assert sorted(m["shape"] for m in routers(after).values()) == sorted(m["shape"] for m in routers(before).values())
    for name, meta in routers(after).items():
        assert meta["dtype"] in ("BF16", "F16", "F32"), name
        module = name.removesuffix("weight")
        assert {n.removeprefix(module) for n in after if n.startswith(module)} <= {"weight", "bias", "e_score_correction_bias"}

    # llm-compressor calibrated the experts linearized, and counted the
    # tokens routed to each in the calibration passes only: every token went
    # to `num_experts_per_tok` experts of every MoE layer.
    if TABLE[arch].moe and label in ("gptq", "awq"):
        moe = facts["moe"]
        assert moe["calibration"] == "every expert on every token (moe_calibrate_all_experts)"
        top_k = json.loads((model / "config.json").read_text())["num_experts_per_tok"]
        assert all(sum(c) == moe["calibration_tokens"] * top_k for c in moe["tokens_routed"].values())

    # The artifact loads and computes what the original does, to
    # quantization error (a layer loaded as its random initialisation is
    # as far off as the logits themselves).
    original, quantized = logits(model), logits(out)
    assert bool(quantized.isfinite().all())
    assert (quantized - original).abs().mean() < 0.5 * original.abs().mean()


def check_gguf(model: Path, out: Path, label: str) -> None:
    """A GGUF pair: every block weight of the file in a quantized GGML type
    (worker/coverage.measure_gguf), as many of them as the original's
    eligible weights, and, where transformers' GGUF loader reads the
    architecture (Llama; it refuses OLMo 2 and misreads a Falcon of the new
    decoder layout), the file computes what the original does. llama.cpp,
    which reads them all, is not installed here (the `llama-cpp` extra)."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker import coverage

    (gguf,) = out.glob("*.gguf")
    reached = coverage.measure_gguf(gguf)
    assert reached.problem(label) is None, reached.problem(label)
    assert reached.fraction >= 0.95 and reached.eligible_params == coverage.measure(model, model).eligible_params
    if json.loads((model / "config.json").read_text())["model_type"] != "llama":
        return
    ids = torch.tensor([[5, 17, 99, 300, 2, 8, 45, 77, 501, 13, 640, 21]])
    loaded = AutoModelForCausalLM.from_pretrained(out, gguf_file=gguf.name, dtype=torch.float32)
    with torch.inference_mode():
        quantized = loaded(ids).logits.float()
    original = logits(model)
    assert bool(quantized.isfinite().all())
    assert (quantized - original).abs().mean() < 0.5 * original.abs().mean()


def test_the_docs_print_the_table():
    """docs/methods.md, where the README's contents send a reader for it."""
    root = Path(__file__).resolve().parents[1]
    assert "docs/methods.md" in (root / "README.md").read_text()
    assert architectures.markdown() in (root / "docs" / "methods.md").read_text()


def test_methods_architectures_prints_the_table():
    from tests.support.cli import invoke

    out = invoke("methods", "--architectures", check=True).stdout
    for name, cells in architectures.matrix():
        assert any(line.startswith(name) and line.split()[-len(cells):] == cells for line in out.splitlines()), name
    assert all(line in out for line in architectures.reasons())


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_a_quantized_moe_serves_with_its_experts_packed(checkpoints, tmp_path, arch):
    """The serve load holds the experts packed (it held them dequantized:
    `weights_bytes` and `serve_vram_bytes` were dense figures), and what it
    computes is what the original does, to quantization error (gpt-oss's
    reference load read its per-expert layers as nothing: random experts)."""
    import torch

    from worker import loading
    from worker.gpu import Device

    model = checkpoints(arch)
    out = tmp_path / "artifact"
    quantize(model, "rtn", out)
    cpu = Device("cpu", None, "cpu")
    served = loading.load_for_serving(out, cpu, None, tmp_path / "serve")
    original = loading.load_for_serving(model, cpu, None, tmp_path / "serve-original")
    assert served.kernel.startswith("gptq-") and served.dense_reason is None
    experts = [m for n, m in served.model.named_modules() if ".experts." in n and hasattr(m, "qweight")]
    assert len(experts) == 2 * 4 * 3  # layers × experts × projections, every one packed
    assert loading.held_bytes(served.model) < 0.6 * loading.held_bytes(original.model)
    ids = torch.tensor([[5, 17, 99, 300, 2, 8, 45, 77, 501, 13, 640, 21]])
    with torch.inference_mode():
        packed, dense = served.model(ids).logits.float(), original.model(ids).logits.float()
    reference = logits(out)
    assert (packed - dense).abs().mean() < 0.5 * dense.abs().mean()
    assert (reference - dense).abs().mean() < 0.5 * dense.abs().mean()


def test_a_hub_model_is_refused_from_its_config_at_submit(checkpoints, monkeypatch):
    """A hub id's config.json is read at submit (from a real HTTP server
    standing in for the hub), so its architecture is refused there too."""
    import http.server
    import threading

    config = (checkpoints("mixtral") / "config.json").read_bytes()

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path == "/api/models/org/tiny-mixtral" else 404)
            self.end_headers()

        def do_GET(self):
            found = self.path == "/org/tiny-mixtral/resolve/main/config.json"
            self.send_response(200 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(config)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        with pytest.raises(SpecError) as refused:
            resolve(JobSpec(model="org/tiny-mixtral", method="nf4"))
        assert str(refused.value) == architectures.refusal("mixtral", "nf4")
        assert resolve(JobSpec(model="org/tiny-mixtral", method="rtn")).model_kind == "hub"
    finally:
        server.shutdown()
