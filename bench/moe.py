"""A mixture of experts of real shape through the farm (issue 17): a random
bf16 model with Qwen3-30B-A3B's layers (hidden 2048, 128 experts of 768, 8
a token, 32 heads over 4 KV heads, a 151,936-token vocabulary), as many of
them as a call's time allows, quantized by GPTQ (W4A16 group 128) and FP8
through a real `qfarm worker start`, every figure read back from the job
rows: quantize time, peak VRAM, artifact size and its share of the bf16
bytes (target for W4: ≤ 0.30), the share of the decoder's weights stored
quantized, and the memory to serve the artifact packed.

    python -m bench.moe --model /tmp/qwen3moe --layers 24 --only gptq,fp8
    bash bench/gpu_run.sh moe --model /tmp/qwen3moe --layers 24     # on the lent GPU

A CPU run at a tiny scale checks the path (the same code, seconds):

    python -m bench.moe --model /tmp/tinymoe --shape tiny --only gptq,rtn --gpus cpu

The model is made on the first run (on the GPU where there is one) and kept
at --model for the next.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_client import JobSpec
from api_client.contract.spec import CalibSpec, EvalSpec
from bench.bench import open_farm, run_with_worker

GiB = 2**30
# Qwen3-30B-A3B's configuration (config.json of Qwen/Qwen3-30B-A3B) but
# the number of layers (48 there); `tiny` is the CPU check's.
SHAPES = {
    "qwen3-30b-a3b": dict(hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
                          num_experts_per_tok=8, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                          vocab_size=151936, max_position_embeddings=40960, rope_theta=1000000.0,
                          norm_topk_prob=True, tie_word_embeddings=False),
    "tiny": dict(hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_experts=4, num_experts_per_tok=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=32000,
                 max_position_embeddings=4096, tie_word_embeddings=False),
}


def make_random_moe(path: Path, shape: str, layers: int) -> None:
    """A Qwen3-MoE of the shape named with `layers` layers and random bf16
    weights, built on the GPU where there is one; its tokenizer is
    QFARM_BENCH_TOKENIZER's (any whose ids fall inside the vocabulary)."""
    import torch
    from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

    config = Qwen3MoeConfig(**SHAPES[shape], num_hidden_layers=layers, bos_token_id=0, eos_token_id=1, pad_token_id=2,
                            dtype="bfloat16")
    torch.manual_seed(0)
    # Built in bf16 directly: an fp32 model of 24 layers is 62 GB before the cast.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = Qwen3MoeForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    # Random weights at the default init give logits of every token alike;
    # the figures here are about memory and time, not accuracy.
    model.save_pretrained(path)
    tokenizer = os.environ.get("QFARM_BENCH_TOKENIZER")
    if tokenizer:
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def specs(a) -> list[tuple[str, JobSpec]]:
    model = str(Path(a.model).resolve())
    evals = EvalSpec(seqlen=a.eval_seqlen, windows=a.eval_windows, decode_tokens=16)
    calib = CalibSpec(source=str(Path(a.calib).resolve()) if a.calib else "builtin", samples=a.calib_samples,
                      seqlen=a.calib_seqlen)
    plan = {
        "gptq": ("GPTQ W4A16 g128", JobSpec(model=model, method="gptq", calib=calib, eval=evals)),
        "fp8": ("FP8 dynamic", JobSpec(model=model, method="fp8", eval=evals)),
        "rtn": ("RTN W4A16 g128", JobSpec(model=model, method="rtn", eval=evals)),
    }
    return [plan[k] for k in a.only.split(",")]


def fmt(x, spec: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x / scale, spec)


def table(rows: list[dict]) -> str:
    out = ["| job | quantized | artifact GiB (of bf16) | quantize s | peak VRAM quantize GiB (torch / NVML) | "
           "weights GiB (serve) | serve VRAM GiB (torch / NVML) | serve kernel | ppl ratio | tokens routed per expert "
           "(min–max) | job s |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["state"] != "succeeded":
            out.append(f"| {r['label']} | {r['state']}: {r.get('error')} |||||||||||")
            continue
        m = r["metrics"]
        routed = (m.get("moe") or {}).get("tokens_routed_per_expert") or {}
        share = r["artifact_bytes"] / r["model_bytes"] if r.get("model_bytes") else None
        out.append(
            f"| {r['label']} | {fmt(r['quantized_fraction'], '.1%', 1)} | {fmt(r['artifact_bytes'], '.2f', GiB)} "
            f"({fmt(share, '.3f')}) | {fmt(r['quantize_seconds'], '.1f')} | "
            f"{fmt(r['peak_vram_bytes'], '.2f', GiB)} / {fmt(r['peak_vram_nvml_bytes'], '.2f', GiB)} | "
            f"{fmt(r['weights_bytes'], '.2f', GiB)} | {fmt(r['serve_vram_bytes'], '.2f', GiB)} / "
            f"{fmt(m.get('serve_vram_nvml_bytes'), '.2f', GiB)} | {r.get('serve_kernel') or '-'} | "
            f"{fmt(r['ppl_ratio'], '.4f')} | {routed.get('min', '-')}–{routed.get('max', '-')} | "
            f"{fmt(r['wall_seconds'], '.1f')} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-30b-a3b")
    p.add_argument("--layers", type=int, default=24, help="decoder layers of the random model (48 in Qwen3-30B-A3B)")
    p.add_argument("--only", default="gptq,fp8")
    p.add_argument("--calib")
    p.add_argument("--calib-samples", type=int, default=16)
    p.add_argument("--calib-seqlen", type=int, default=512)
    p.add_argument("--eval-seqlen", type=int, default=2048)
    p.add_argument("--eval-windows", type=int, default=2)
    p.add_argument("--gpus", default="auto")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    if not (Path(a.model) / "config.json").exists():
        t = time.perf_counter()
        make_random_moe(Path(a.model), a.shape, a.layers)
        print(f"made a random {a.shape}-shaped MoE of {a.layers} layers (bf16) in {time.perf_counter() - t:.0f} s",
              flush=True)
    client, home = open_farm()
    rows = run_with_worker(client, specs(a), a.timeout, a.gpus, home / "worker-moe.log", a.json_out, table)
    config = json.loads((Path(a.model) / "config.json").read_text())
    gpu = next((r["gpu_name"] for r in rows if r.get("gpu_name")), "cpu")
    print(f"\n## MoE: {a.shape} shape, {config['num_hidden_layers']} layers, {config.get('num_local_experts', config.get('num_experts'))} experts, on {gpu}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
