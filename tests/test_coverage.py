"""quantized_fraction, read from an artifact's tensors: each quantized form
the engines write counts, a full-precision weight (fake-quantized or left
out) does not, routers are not eligible and must stay in full precision;
and a job whose method reached too little fails in one line, before any
upload."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from worker import coverage

H = 128  # hidden size of the checkpoints written here


def checkpoint(path, tensors: dict, model_type="llama", quantization_config=None):
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path / "model.safetensors")
    config = {"model_type": model_type}
    if quantization_config:
        config["quantization_config"] = quantization_config
    (path / "config.json").write_text(json.dumps(config))
    return path


def dense(*shape):
    return torch.zeros(*shape, dtype=torch.bfloat16)


def packed(prefix, rows, cols):
    """compressed-tensors pack-quantized int4: 8 values an int32."""
    return {f"{prefix}.weight_packed": torch.zeros(rows, cols // 8, dtype=torch.int32),
            f"{prefix}.weight_scale": dense(rows, 1), f"{prefix}.weight_shape": torch.tensor([rows, cols])}


W4 = {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": 4}}}}


def test_every_quantized_form_counts_and_full_precision_does_not(tmp_path):
    layer = "model.layers.0"
    tensors = {
        "model.embed_tokens.weight": dense(1024, H), "lm_head.weight": dense(1024, H),
        f"{layer}.input_layernorm.weight": dense(H),
        **packed(f"{layer}.self_attn.q_proj", H, H),
        f"{layer}.self_attn.k_proj.weight": torch.zeros(H, H, dtype=torch.float8_e4m3fn),  # FP8
        f"{layer}.self_attn.v_proj.weight": torch.zeros(H, H, dtype=torch.int8),  # int8
        f"{layer}.self_attn.o_proj.qweight": torch.zeros(H // 8, H, dtype=torch.int32),  # GPTQ
        f"{layer}.mlp.up_proj.weight": torch.zeros(H * H // 2, 1, dtype=torch.uint8),  # bitsandbytes 4-bit
        f"{layer}.mlp.up_proj.weight.absmax": torch.zeros(H, dtype=torch.float32),
        # Fake-quantized: full-precision values beside their scales.
        f"{layer}.mlp.down_proj.weight": dense(H, 2 * H), f"{layer}.mlp.down_proj.weight_scale": dense(H, 1),
    }
    reached = coverage.measure(checkpoint(tmp_path / "a", tensors, quantization_config=W4))
    assert reached.eligible_params == 5 * H * H + 2 * H * H
    assert reached.quantized_params == 5 * H * H
    assert reached.unreached == [f"{layer}.mlp.down_proj"]
    assert reached.fraction == pytest.approx(5 / 7)
    assert reached.problem("rtn") == (
        "rtn stored only 71.4 % of the decoder's linear and expert weights quantized (at least 95 % expected); "
        "not reached: model.layers.*.mlp.down_proj (1 modules)")


def test_routers_are_not_eligible_and_must_stay_in_full_precision(tmp_path):
    layer = "model.layers.0.mlp"
    experts = {name: t for e in range(4) for name, t in packed(f"{layer}.experts.{e}.up_proj", H, H).items()}
    kept = checkpoint(tmp_path / "kept", {**experts, f"{layer}.gate.weight": dense(4, H),
                                          f"{layer}.shared_expert_gate.weight": dense(1, H)}, "qwen2_moe", W4)
    reached = coverage.measure(kept)
    assert reached.fraction == 1.0 and reached.problem("gptq") is None
    assert coverage.patterns(reached.kept) == ["model.layers.*.mlp.gate", "model.layers.*.mlp.shared_expert_gate"]

    quantized_gate = checkpoint(tmp_path / "gate", {**experts, **packed(f"{layer}.shared_expert_gate", 8, H)},
                                "qwen2_moe", W4)
    assert coverage.measure(quantized_gate).problem("gptq").startswith(
        "gptq quantized layers that must stay in full precision (MoE routers and shared-expert gates, which vLLM "
        "loads unquantized): model.layers.*.mlp.shared_expert_gate")


def test_fused_experts_left_as_they_were_are_not_reached(tmp_path):
    """gpt-oss's experts are 3-D parameters; bitsandbytes left them so."""
    layer = "model.layers.0"
    tensors = {f"{layer}.self_attn.q_proj.weight": torch.zeros(H * H // 2, 1, dtype=torch.uint8),
               f"{layer}.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4": torch.zeros(8, dtype=torch.uint8),
               f"{layer}.mlp.experts.gate_up_proj": dense(4, H, 2 * H), f"{layer}.mlp.experts.gate_up_proj_bias": dense(4, 2 * H),
               f"{layer}.mlp.experts.down_proj": dense(4, H, H), f"{layer}.mlp.router.weight": dense(4, H)}
    reached = coverage.measure(checkpoint(tmp_path / "a", tensors, "gpt_oss"))
    assert reached.fraction == pytest.approx(1 / 13)
    assert coverage.patterns(reached.unreached) == ["model.layers.*.mlp.experts.down_proj",
                                                     "model.layers.*.mlp.experts.gate_up_proj"]


def test_weights_missing_from_the_artifact_count_as_not_quantized(tmp_path):
    layer = "model.layers.0.self_attn"
    original = checkpoint(tmp_path / "orig", {f"{layer}.{p}_proj.weight": dense(H, H) for p in "qkvo"})
    artifact = checkpoint(tmp_path / "art", {**packed(f"{layer}.q_proj", H, H)}, quantization_config=W4)
    reached = coverage.measure(artifact, original)
    assert reached.missing_params == 3 * H * H and reached.fraction == 0.25
    assert "every layer present was reached; 49,152 parameters of the original's are not in the artifact" in \
        reached.problem("awq")


@pytest.mark.slow
def test_a_job_that_quantized_nothing_fails_before_uploading(qfarm_env, tiny_model, monkeypatch):
    """A library that "succeeds" without quantizing (bitsandbytes on
    Falcon's FalconLinear layers did): the job fails in one line naming what
    was not reached, and nothing is uploaded."""
    from api_client.app.client import job_row
    from api_client.cli.render import status_lines
    from api_client.config import Settings
    from api_client.contract.spec import JobSpec, resolve
    from api_client.infra.db import Database, jobs
    from worker import methods, runner

    def writes_the_original(ctx, params, fmt):
        for f in ctx.model_dir.iterdir():
            shutil.copy(f, ctx.output_dir / f.name)

    monkeypatch.setitem(methods._IMPLEMENTATIONS, "rtn", writes_the_original)
    settings = Settings.from_env()
    db = Database(settings.database_url)
    db.upgrade()
    jobs.create(db, job_row(resolve(JobSpec(model=str(tiny_model), method="rtn")), "noop00000001", "tester", "qfarm.test"))
    runner.execute("noop00000001", settings, worker="test@host")
    job = jobs.get(db, "noop00000001")
    db.dispose()
    assert job.state == "failed" and job.artifact_uri is None
    assert job.error.startswith("rtn stored only 0.0 % of the decoder's linear and expert weights quantized")
    assert "not reached: model.layers.*.mlp.down_proj" in job.error
    assert job.quantized_fraction == 0.0
    assert any(line.startswith("quantized") and "0.0 %" in line for line in status_lines(job))
    assert not list((qfarm_env / "artifacts").rglob("*.safetensors"))
