"""qfarm's benchmark: every method through the farm itself (the CLI's client
API → Redis → a `qfarm worker start` process → the method registry), one
table at the end.

    python -m bench.bench refmodel --model ../shared/refmodel --calib ../shared/data/calib-news-from-nowhere.txt \
        --eval ../shared/data/eval-log-school-house.txt
    python -m bench.bench big --model /tmp/llama7b      # a random 7B-shaped Llama (made if absent)

Results go to stdout as a Markdown table and, with --json, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_client import Client, JobSpec
from api_client.app.estimate import device_class
from api_client.contract.spec import CalibSpec, EvalSpec
from api_client.infra.db import Database, jobs
from api_client.infra.db.jobs import aware

# Perplexity ratios measured on one H100 calling the libraries directly
# (issue 3), W4 g128 where it applies.
REFERENCE_RATIO = {"rtn": 1.0052, "gptq": 1.0000, "awq": 1.0039, "nf4": 1.0034, "int8": 1.0003, "fp8": 1.0001}
GiB, MiB = 2**30, 2**20


SHAPES = {
    # TinyLlama's shape.
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, intermediate_size=5632, num_attention_heads=32, num_key_value_heads=4),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
    "13b": dict(hidden_size=5120, num_hidden_layers=40, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=40),
}


def make_random_llama(path: Path, dtype: str, shape: str = "7b") -> None:
    """A Llama of the shape named (SHAPES) with random weights, built on the
    GPU; its tokenizer is QFARM_BENCH_TOKENIZER's where that is set."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], vocab_size=32000, max_position_embeddings=4096,
                      bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    tok_src = os.environ.get("QFARM_BENCH_TOKENIZER")
    if tok_src:
        AutoTokenizer.from_pretrained(tok_src).save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def open_farm() -> tuple[Client, Path]:
    """The client and QFARM_HOME of a bench run, the database migrated. A
    SIGTERM (`timeout`) exits through the caller's finally, so its worker
    goes too instead of serving the next run's queue."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    client = Client()
    Database(client.settings.database_url).upgrade()
    home = Path(os.environ.get("QFARM_HOME", Path.home() / ".qfarm"))
    home.mkdir(parents=True, exist_ok=True)
    return client, home


def start_worker(gpus: str, log: Path) -> subprocess.Popen:
    from api_client.infra import queue

    proc = subprocess.Popen([sys.executable, "-m", "api_client.cli", "worker", "start", "--gpus", gpus],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not any(q.startswith("qfarm.") for q in queue.served_queues(os.environ.get("QFARM_BROKER_URL", "redis://127.0.0.1:6379/0"), 1.0)):
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, 9)  # never leave a worker behind a failed start
            raise SystemExit("worker did not start:\n" + log.read_text()[-4000:])
    return proc


def run_with_worker(client: Client, specs: list[tuple[str, JobSpec]], timeout_s: float, gpus: str, log: Path,
                    json_out: str | None, table) -> list[dict]:
    """Start a worker on `gpus`, run `specs` through it, stop it. After every
    job the rows are written to `json_out`, so a run cut short still reports
    what it did, and `table(rows)`'s last line is printed."""
    import signal

    worker = start_worker(gpus, log)

    def progress(rows):
        if json_out:
            Path(json_out).write_text(json.dumps(rows, indent=2, default=str))
        print(table(rows).splitlines()[-1], flush=True)

    try:
        return run_jobs(client, specs, timeout_s, progress)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)


def run_jobs(client: Client, specs: list[tuple[str, JobSpec]], timeout_s: float, on_row=lambda rows: None) -> list[dict]:
    from api_client.errors import QFarmError

    submitted, rows = [], []
    for label, spec in specs:
        try:
            job = client.submit(spec)
        except QFarmError as exc:
            print(f"refused {label}: {exc}", flush=True)
            rows.append({"label": label, "state": "refused", "error": str(exc), "format": spec.format or "-"})
            continue
        print(f"submitted {label}: {job.id}", flush=True)
        submitted.append((label, job.id))
    for label, job_id in submitted:
        job = client.wait(job_id, timeout_s=timeout_s, on_event=lambda e, job_id=job_id: print(
            f"  {aware(e.at):%H:%M:%S} {job_id} {e.state} {e.stage or ''} {e.message or ''}"[:160], flush=True))
        wall = (aware(job.finished_at) - aware(job.started_at)).total_seconds() if job.started_at and job.finished_at else None
        # Seconds from each stage's event to the next one.
        evs = [e for e in client.events(job_id) if e.state in ("running", "succeeded", "failed")]
        stage_s: dict[str, float] = {}
        for e, nxt in zip(evs, evs[1:], strict=False):
            if e.stage:
                stage_s[e.stage] = stage_s.get(e.stage, 0.0) + (aware(nxt.at) - aware(e.at)).total_seconds()
        row = jobs.to_dict(job)
        row.update(label=label, wall_seconds=wall, stage_seconds=stage_s, metrics=job.metrics or {})
        rows.append(row)
        on_row(rows)
    return rows


def fmt(x, spec, scale=1.0, none="-"):
    return none if x is None else format(x / scale, spec)


def table_refmodel(rows: list[dict]) -> str:
    out = ["| method | format | ppl fp16 | ppl quantized | ratio | reference | Δ vs reference | quantize s | peak VRAM quantize (torch / NVML) | peak VRAM eval | artifact | tok/s fp16 → quantized |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["state"] != "succeeded":
            out.append(f"| {r['label']} | {r['format']} | {r['state']}: {r['error']} |||||||||")
            continue
        ref = REFERENCE_RATIO.get(r["method"]) if r["format"] in ("compressed-tensors", "bitsandbytes") else None
        delta = "-" if ref is None else f"{(r['ppl_ratio'] / ref - 1) * 100:+.2f}%"
        out.append(
            f"| {r['label']} | {r['format']} | {r['ppl_baseline']:.2f} | {r['ppl_quantized']:.2f} | {r['ppl_ratio']:.4f} | "
            f"{fmt(ref, '.4f')} | {delta} | {r['quantize_seconds']:.1f} | "
            f"{fmt(r['peak_vram_bytes'], '.0f', MiB)} / {fmt(r['peak_vram_nvml_bytes'], '.0f', MiB)} MiB | "
            f"{fmt(r['eval_peak_vram_bytes'], '.0f', MiB)} MiB | {fmt(r['artifact_bytes'], '.1f', MiB)} MiB | "
            f"{fmt(r['tokens_per_s_baseline'], '.0f')} → {fmt(r['tokens_per_s_quantized'], '.0f')} |")
    return "\n".join(out)


def table_big(rows: list[dict]) -> str:
    out = ["| job | weights during quantize | --max-vram | library s (of which loading weights) | peak VRAM quantize (torch / NVML) | artifact | eval s | job wall s | not library / eval | stages outside: loading, calibrating, uploading s | peak VRAM eval | tok/s fp16 → quantized |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["state"] != "succeeded":
            out.append(f"| {r['label']} | {r['state']}: {r['error']} |||||||||||")
            continue
        other = r["wall_seconds"] - r["quantize_seconds"] - r["eval_seconds"]
        load = r["metrics"].get("weights_load_seconds")
        st = r["stage_seconds"]
        out.append(
            f"| {r['label']} | {r['metrics'].get('weights_on', '-')} | {fmt(r['max_vram_bytes'], '.0f', GiB, 'none')} GiB | "
            f"{r['quantize_seconds']:.1f} ({fmt(load, '.1f')}) | {fmt(r['peak_vram_bytes'], '.2f', GiB)} / {fmt(r['peak_vram_nvml_bytes'], '.2f', GiB)} GiB | "
            f"{fmt(r['artifact_bytes'], '.2f', GiB)} GiB | {r['eval_seconds']:.1f} | {r['wall_seconds']:.1f} | "
            f"{other:.1f} s ({other / r['wall_seconds'] * 100:.1f}%) | "
            f"{st.get('loading', 0):.1f}, {st.get('calibrating', 0):.1f}, {st.get('uploading', 0):.1f} | "
            f"{fmt(r['eval_peak_vram_bytes'], '.2f', GiB)} GiB | "
            f"{fmt(r['tokens_per_s_baseline'], '.1f')} → {fmt(r['tokens_per_s_quantized'], '.1f')} |")
    return "\n".join(out)


def refmodel_specs(a) -> list[tuple[str, JobSpec]]:
    calib = CalibSpec(source=str(Path(a.calib).resolve()), samples=128, seqlen=256)
    ev = EvalSpec(source=str(Path(a.eval).resolve()), seqlen=256, windows=a.eval_windows, decode_tokens=64)
    model = str(Path(a.model).resolve())
    plan = [("rtn", None), ("gptq", None), ("awq", None), ("nf4", None), ("int8", None), ("fp8", None), ("fp4", None),
            ("gptq", "gptq"), ("awq", "awq")]
    only = set(a.only.split(",")) if a.only else None
    specs = []
    for method, fmt_ in plan:
        label = method if fmt_ is None else f"{method} --format {fmt_}"
        if only and label.split()[0] not in only and label not in only:
            continue
        specs.append((label, JobSpec(model=model, method=method, format=fmt_,
                                     calib=calib if method in ("gptq", "awq") else None, eval=ev)))
    return specs


def quickstart_specs(a) -> list[tuple[str, JobSpec]]:
    """The reference model with every default (the builtin texts, the
    worker's defaults): what `bash scripts/quickstart.sh` runs, per method."""
    model = str(Path(a.model).resolve())
    plan = ["gptq", "rtn", "awq", "nf4", "int8", "fp4"]
    only = set(a.only.split(",")) if a.only else None
    return [(m, JobSpec(model=model, method=m)) for m in plan if not only or m in only]


def table_quickstart(rows: list[dict]) -> str:
    """Job time (started → finished, as `qfarm status` shows it) beside the
    estimate made at submit for the device that ran it."""
    out = ["| method | device | job s | quantize s | eval s | estimate s | measured / estimate | ppl ratio | eval windows | peak RSS quantize / job |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["state"] != "succeeded":
            out.append(f"| {r['label']} | {r['state']}: {r['error']} |||||||||")
            continue
        device = device_class(r["gpu_name"])[1]
        est = next((e["seconds"] for e in r.get("estimates") or [] if e["device"] == device), None)
        m = r["metrics"]
        out.append(
            f"| {r['label']} | {device} | {r['wall_seconds']:.1f} | {r['quantize_seconds']:.1f} | {r['eval_seconds']:.1f} | "
            f"{fmt(est, '.1f')} | {fmt(r['wall_seconds'] / est if est else None, '.2f')} | {r['ppl_ratio']:.4f} | "
            f"{m.get('eval_windows')}×{m.get('eval_seqlen')} | "
            f"{fmt(r['peak_rss_bytes'], '.0f', MiB)} / {fmt(r['eval_peak_rss_bytes'], '.0f', MiB)} MiB |")
    return "\n".join(out)


def big_specs(a) -> list[tuple[str, JobSpec]]:
    calib = CalibSpec(source=str(Path(a.calib).resolve()) if a.calib else "builtin", samples=128, seqlen=256)
    ev = EvalSpec(seqlen=2048, windows=4, decode_tokens=32)
    model = str(Path(a.model).resolve())
    plan = {
        "gptq-gpu": ("GPTQ W4 g128, weights on the GPU", JobSpec(model=model, method="gptq", calib=calib, eval=ev, weights="gpu")),
        "gptq-cpu": ("GPTQ W4 g128, --max-vram 10GiB (auto: weights on the CPU)",
                     JobSpec(model=model, method="gptq", calib=calib, eval=ev, max_vram="10GiB")),
        "nf4": ("NF4", JobSpec(model=model, method="nf4", eval=ev)),
        "awq": ("AWQ W4 g128", JobSpec(model=model, method="awq", calib=calib, eval=ev, weights="gpu")),
    }
    keys = a.only.split(",") if a.only else list(plan)
    return [plan[k] for k in keys]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("suite", choices=["refmodel", "big", "quickstart"])
    p.add_argument("--model", required=True)
    p.add_argument("--calib")
    p.add_argument("--eval")
    p.add_argument("--only", help="comma-separated subset")
    p.add_argument("--dtype", default="bfloat16", help="dtype of the random 7B model, if it is made")
    p.add_argument("--gpus", default="auto")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--eval-windows", type=int, help="refmodel: fewer perplexity windows (a quick check)")
    a = p.parse_args()

    if a.suite == "big" and not (Path(a.model) / "config.json").exists():
        t = time.perf_counter()
        make_random_llama(Path(a.model), a.dtype)
        print(f"made a random 7B-shaped Llama ({a.dtype}) in {time.perf_counter() - t:.0f} s", flush=True)

    client, home = open_farm()
    table = {"refmodel": table_refmodel, "big": table_big, "quickstart": table_quickstart}[a.suite]
    specs = {"refmodel": refmodel_specs, "big": big_specs, "quickstart": quickstart_specs}[a.suite]
    rows = run_with_worker(client, specs(a), a.timeout, a.gpus, home / f"worker-{a.suite}.log", a.json_out, table)
    gpu = next((r["gpu_name"] for r in rows if r.get("gpu_name")), "?")
    print(f"\n## {a.suite} on {gpu}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
