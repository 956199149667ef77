"""Which W4 kernel, and why: every GPTQ kernel GPTQModel offers, timed on
one GPU against the bf16 original, the way qfarm's serve pass runs them.

    python -m bench.kernels --model /tmp/llama7b --json /tmp/kernels.json --budget 150

For the bf16 model (made at --model if absent, a random 7B-shaped Llama) and
a W4 g128 symmetric copy of it (round-to-nearest, written in GPTQModel's
gptq_v2 layout beside it), each kernel in turn:

- loads the W4 copy through transformers with that backend (qfarm's serve
  load, worker/loading.load_gptq) and checks its first layer against the
  checkpoint's dense product (worker/packing.check_kernel);
- times one 4096 × 11008 layer (up_proj) at batch 1 and 16, eagerly and
  replayed from a CUDA graph (µs a call);
- times the seven linear layers of one decoder layer replayed from a graph,
  times the layer count: the share of a decode step the weights take;
- times a greedy decode at batch 1 with worker/serve_speed.py (static
  cache, the step in a CUDA graph) and, for the bf16 model and the first W4
  kernel, the same loop eagerly and transformers' `generate` (the figure
  qfarm reported before). Batched throughput is the compare group's
  (bench/compare.py), on the kernel each job chose.

Each kernel's failure is recorded and the next one runs; a kernel that would
start past --budget seconds is skipped and says so. Machete (Hopper) fetches
CUTLASS when first used and fails without internet; ExLlamaV2 compiles its
C++ sources: both run last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The order qfarm tries them in, then the ones it does not try (ExLlamaV2
# compiles for a while; Machete fetches CUTLASS, which fails offline).
KERNELS = ["gptq_marlin", "gptq_triton", "gptq_torch", "gptq_exllama_v2", "gptq_machete"]
GROUP = 128


def rtn_w4(dense: Path, dest: Path, device: str = "cuda:0") -> float:
    """Write `dense` (a Llama checkpoint) as W4 g128 symmetric round-to-
    nearest in the gptq_v2 layout (the layout qfarm's packed serve load
    uses): q = clamp(round(w / s), −8, 7) + 8 with s = absmax / 7 per group
    of 128 inputs; qweight packs 8 values per int32 along the inputs, value
    i at bits 4i; the zero point 8 is packed along the outputs. Seconds."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    start = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    config = json.loads((dense / "config.json").read_text())
    shifts = torch.arange(8, device=device, dtype=torch.int64) * 4
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(dense.glob("*.safetensors")):
        with safe_open(shard, framework="pt", device=device) as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = f.get_tensor(name)
                if not (name.endswith("proj.weight") and ".layers." in name):
                    out[name] = tensor.to(torch.float16).cpu()
                    continue
                prefix = name.removesuffix(".weight")
                rows, cols = tensor.shape
                w = tensor.float().view(rows, cols // GROUP, GROUP)
                scale = (w.abs().amax(-1, keepdim=True) / 7).clamp_min(1e-8)
                q = ((w / scale).round().clamp(-8, 7) + 8).to(torch.int64).view(rows, cols)
                packed = (q.t().reshape(cols // 8, 8, rows) << shifts.view(1, 8, 1)).sum(1)
                out[f"{prefix}.qweight"] = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32).cpu()
                out[f"{prefix}.scales"] = scale.view(rows, cols // GROUP).t().to(torch.float16).contiguous().cpu()
                zero = torch.full((cols // GROUP, rows // 8), 0x88888888 - 2**32, dtype=torch.int32)
                out[f"{prefix}.qzeros"] = zero
                out[f"{prefix}.g_idx"] = (torch.arange(cols, dtype=torch.int32) // GROUP)
    save_file(out, dest / "model.safetensors", metadata={"format": "pt"})
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": GROUP, "sym": True, "desc_act": False,
                                     "format": "gptq_v2", "checkpoint_format": "gptq_v2",
                                     "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj",
                                                                       "self_attn.v_proj", "self_attn.o_proj",
                                                                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]]}
    config["dtype"] = "float16"
    config.pop("torch_dtype", None)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return time.perf_counter() - start


def per_call_us(fn, graph: bool, calls: int = 200) -> float:
    """µs a call of `fn`, eagerly (launches included) or replayed from a CUDA graph."""
    import torch

    with torch.inference_mode():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        if graph:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                fn()
            run = g.replay
        else:
            run = fn
        run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def layer_figures(model) -> dict[str, Any]:
    """One 4096 × 11008 layer, and the seven linear layers of a decoder layer
    times the layer count (ms a decode step spends in weights at batch 1)."""
    import torch

    layer = model.model.layers[0]
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    out: dict[str, Any] = {}

    def record(key: str, fn, graph: bool, scale: float = 1.0) -> None:
        try:
            out[key] = per_call_us(fn, graph) * scale
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot be timed this way says why
            out[f"{key}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"

    for batch in (1, 16):
        x = torch.randn(batch, hidden, device="cuda", dtype=dtype)
        for graph in (False, True):
            record(f"up_proj_b{batch}_{'graph' if graph else 'eager'}_us", lambda x=x: layer.mlp.up_proj(x), graph)
    x, y = torch.randn(1, hidden, device="cuda", dtype=dtype), torch.randn(1, inter, device="cuda", dtype=dtype)
    attn, mlp = layer.self_attn, layer.mlp

    def linears():
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj):
            proj(x)
        mlp.down_proj(y)

    record("linears_per_step_ms", linears, True, model.config.num_hidden_layers / 1000)
    return out


def generate_tokens_per_s(model, prompt: list[int], new_tokens: int) -> float:
    """transformers' eager `generate` at batch 1 (qfarm's figure before)."""
    import torch

    ids = torch.tensor([prompt], device="cuda")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start)


def measure(model, prompt: list[int], new_tokens: int, full: bool) -> dict[str, Any]:
    """The layer figures and a decode at batch 1 replayed from a graph; with
    `full` (the bf16 model and the first W4 kernel), also the same decode
    run eagerly and with `generate` (the figure qfarm reported before)."""
    from worker import serve_speed

    out: dict[str, Any] = layer_figures(model)
    decode = serve_speed.measure(model, prompt[:32], new_tokens)
    out["decode"] = decode.summary()
    out["decode_tokens"] = decode.tokens[0][:16]
    if full:
        out["decode_eager"] = serve_speed.measure(model, prompt[:32], new_tokens, graphs=False).summary()
        out["generate_tokens_per_s"] = generate_tokens_per_s(model, prompt[:32], new_tokens)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="/tmp/llama7b")
    p.add_argument("--shape", default="7b")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--kernels", default=",".join(KERNELS))
    p.add_argument("--budget", type=float, default=150, help="seconds; a kernel that would start later is skipped")
    p.add_argument("--json", dest="json_out")
    a = p.parse_args()
    started = time.monotonic()
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    from bench.bench import make_random_llama
    from worker import loading, packing
    from worker.gpu import Device, release_memory

    device = Device("cuda", 0, torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
    dense = Path(a.model)
    results: dict[str, Any] = {"gpu": device.name, "capability": list(device.capability or ()), "torch": torch.__version__}
    if not (dense / "config.json").exists():
        t = time.perf_counter()
        make_random_llama(dense, "bfloat16", a.shape)
        results["made_model_s"] = time.perf_counter() - t
    w4 = dense.with_name(dense.name + "-w4-gptq_v2")
    if not (w4 / "config.json").exists():
        results["rtn_w4_s"] = rtn_w4(dense, w4)
    prompt = torch.randint(3, 30000, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    rows: dict[str, Any] = {}
    results["rows"] = rows

    def save() -> None:
        if a.json_out:
            Path(a.json_out).write_text(json.dumps(results, indent=1, default=str))

    model = AutoModelForCausalLM.from_pretrained(dense, dtype="auto", device_map={"": 0}).eval()
    rows["bf16"] = {"kernel": "dense", **measure(model, prompt, a.new_tokens, full=True)}
    del model
    release_memory(device)
    save()
    print(table(results), flush=True)
    generate_done = False
    for backend in a.kernels.split(","):
        if time.monotonic() - started > a.budget:
            rows[backend] = {"result": f"skipped: past the {a.budget:.0f} s budget"}
            continue
        t = time.perf_counter()
        row: dict[str, Any] = {}
        try:
            model = AutoModelForCausalLM.from_pretrained(w4, dtype="auto", device_map={"": 0},
                                                         quantization_config=GPTQConfig(bits=4, backend=backend)).eval()
            row.update(kernel=loading.kernel_of(model), load_s=time.perf_counter() - t)
            try:
                row["result"] = packing.check_kernel(model, w4)
            except packing.WrongOutput as exc:
                row["result"] = f"wrong output: {exc}"
            else:
                row.update(measure(model, prompt, a.new_tokens, full=not generate_done))
                generate_done = True
            del model
        except Exception as exc:  # noqa: BLE001 - recorded; the next kernel runs
            row.update(result=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
                       seconds=time.perf_counter() - t)
        rows[backend] = row
        release_memory(device)
        save()
        print(f"{backend}: {row.get('kernel', '-')} {row['result']} ({time.perf_counter() - t:.1f} s)", flush=True)
        # After every kernel: a later one may build for longer than the call has left.
        print(table(results), flush=True)
    save()


def table(results: dict[str, Any]) -> str:
    def f(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    base = (results["rows"].get("bf16") or {}).get("decode", {}).get("decode_tokens_per_s")
    out = [f"## W4 kernels on {results['gpu']} (7B shape, W4 g128 sym, gptq_v2)\n",
           "| row | kernel | result | up_proj µs b1 eager / graph | b16 graph | linears ms / step | decode tok/s b1 (method) "
           "| × bf16 | eager static tok/s | generate tok/s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results["rows"].items():
        d, e = r.get("decode") or {}, r.get("decode_eager") or {}
        tok = d.get("decode_tokens_per_s")
        ratio = f"{tok / base:.2f}" if tok and base else "-"
        out.append(f"| {name} | {r.get('kernel', '-')} | {r.get('result', 'measured')[:80]} | "
                   f"{f(r.get('up_proj_b1_eager_us'))} / {f(r.get('up_proj_b1_graph_us'))} | {f(r.get('up_proj_b16_graph_us'))} | "
                   f"{f(r.get('linears_per_step_ms'), '.2f')} | {f(tok)} (sd {f(d.get('decode_tokens_per_s_sd'))}) "
                   f"({d.get('method', '-')}) | {ratio} | {f(e.get('decode_tokens_per_s'))} | "
                   f"{f(r.get('generate_tokens_per_s'))} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
