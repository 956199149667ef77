"""A quantized mixture of experts loads with one linear layer per expert
(worker/layout.py), and runs only the experts its tokens were routed to."""

from __future__ import annotations

import pytest

from worker import layout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A tiny random Qwen3-MoE (8 experts, 2 a token) and the same
    checkpoint built as a quantized one is (layout.built)."""
    import torch
    import transformers

    config = transformers.Qwen3MoeConfig(
        vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=32, intermediate_size=256, moe_intermediate_size=128, num_experts=8, num_experts_per_tok=2,
        max_position_embeddings=512)
    torch.manual_seed(0)
    fused = transformers.AutoModelForCausalLM.from_config(config).eval()
    path = tmp_path_factory.mktemp("qwen3moe")
    fused.save_pretrained(path)
    with layout.built("qwen3_moe"):
        linear = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    return fused, linear


def rows_per_expert(experts) -> tuple[list[int], list]:
    """Each call's batch size, recorded by hooks on every expert."""
    rows: list[int] = []
    # The list also holds the experts' shared activation: the first num_experts are the experts.
    hooks = [experts[i].register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
             for i in range(experts.num_experts)]
    return rows, hooks


def test_only_routed_experts_run_and_the_model_computes_what_the_fused_one_does(moe):
    import torch

    fused, linear = moe
    experts = linear.model.layers[0].mlp.experts
    assert type(experts).__mro__[1].__module__.startswith("llmcompressor.")
    ids = torch.tensor([[5, 17, 300]])  # 3 tokens x 2 slots: at most 6 of the 8 experts get any
    rows, hooks = rows_per_expert(experts)
    with torch.no_grad():
        got, want = linear(ids).logits, fused(ids).logits
    for hook in hooks:
        hook.remove()
    assert 0 not in rows and 1 <= len(rows) <= 6 and sum(rows) == 3 * 2
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def test_the_sum_is_the_library_s_bit_for_bit_and_calibration_still_reaches_every_expert(moe):
    import torch
    from llmcompressor.modeling.moe.context import moe_calibration_context

    _, linear = moe
    experts = linear.model.layers[0].mlp.experts
    library = type(experts).__mro__[1].forward
    torch.manual_seed(1)
    hidden = torch.randn(5, 128)
    top_k = torch.tensor([[0, 3], [3, 0], [7, 3], [0, 7], [3, 7]])  # experts 1, 2, 4, 5, 6: no token
    weights = torch.rand(5, 2)
    with torch.no_grad():
        assert torch.equal(experts(hidden, top_k, weights), library(experts, hidden, top_k, weights))
        rows, hooks = rows_per_expert(experts)
        with moe_calibration_context():
            experts(hidden, top_k, weights)
    for hook in hooks:
        hook.remove()
    assert rows == [5] * 8  # every expert sees every token while calibrating
