"""`qfarm compare` through the farm itself, with the figures a team chooses
by, as a Markdown table: the group is submitted by the client's `compare`
(as the CLI does), a `qfarm worker start` process serves every GPU, and the
table is built by api_client/app/compare.py from the job rows.

    python -m bench.compare --model .gpu/refmodel --methods gptq,awq,rtn,fp8,nf4,fp4,int8,gptq:gptq,awq:awq --tasks builtin
    python -m bench.compare --model /tmp/llama7b --shape 7b --methods gptq,awq,nf4,int8,fp8 --tasks builtin --limit 200
    python -m bench.compare --model /tmp/llama13b --shape 13b --methods gptq --max-vram 16GiB
    python -m bench.compare --model /tmp/llama7b --shape 7b --methods gguf:q4_k_m,gguf:q8_0 --calib-samples 32 --eval-windows 4

GGUF members add a table of their files: size, the runtime that measured
them, the time each format took, the importance matrix, the tensor types.

Also printed, for the farm (issue 10): each worker's time from start to its
first job, and the idle gaps between one job's end and the next one's start
on the same GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_client import JobSpec
from api_client.app.compare import compare
from api_client.contract.spec import CalibSpec, EvalSpec
from api_client.infra.db.jobs import aware
from bench.bench import SHAPES, make_random_llama, open_farm, start_worker
from bench.farm import farm_figures

GiB, MiB = 2**30, 2**20
# What the usual guide says it takes to run a 7B model (the issue's table).
GUIDE_7B = {"original": "14 GB (fp16)", "int8": "7 GB", "gptq": "~4 GB", "awq": "~4 GB", "nf4": "~5 GB"}


def size(n, unit=GiB, spec=".2f"):
    return "-" if n is None else format(n / unit, spec)


def table(comparison, members, guide: dict) -> str:
    """The compare table with every figure's uncertainty (± is a 95 %
    interval's half-width; speeds are means over repeats with their
    standard deviation, sd) and how the speeds were timed."""
    from api_client.contract.figures import recovery_text

    by_id = {j.id: j for j in members}
    base_speed = next((r.serve_tokens_per_s for r in comparison.rows if r.label == "original"), None)
    out = ["| | method | kernel (serve path) | timed | ppl ratio (95 %) | KL mean (95 %) / p99 | task recovery ± 95 % | artifact GiB "
           "| weights GiB | serve VRAM GiB (torch / NVML) | guide, 7B | quantize s | decode tok/s b1 (sd over repeats) | × original "
           "| batch tok/s (batch×prompt+new) | prefill tok/s | decode tok/s, reference load | job s | state |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in comparison.rows:
        job = by_id.get(r.job_id)
        m = (job.metrics or {}) if job else {}
        if r.label == "original":
            nvml, ref_speed, wall = None, job.tokens_per_s_baseline if job else None, None
            decode, batch = m.get("serve_decode_baseline") or {}, m.get("serve_batch_baseline") or {}
        else:
            nvml, ref_speed = m.get("serve_vram_nvml_bytes"), job.tokens_per_s_quantized if job else None
            wall = (aware(job.finished_at) - aware(job.started_at)).total_seconds() if job and job.started_at and job.finished_at else None
            decode, batch = m.get("serve_decode") or {}, m.get("serve_batch") or {}
        state = r.state if r.state != "failed" else f"failed: {r.error}"
        ratio = size(r.ppl_ratio, 1, ".4f") + (f" ({r.ppl_ratio_low:.4f}-{r.ppl_ratio_high:.4f})"
                                                if r.ppl_ratio_low is not None and r.ppl_ratio_high is not None else "")
        kl = "-" if r.kl_divergence is None else f"{r.kl_divergence:.4f}" + \
            (f" ({r.kl_interval[0]:.4f}-{r.kl_interval[1]:.4f})" if r.kl_interval else "") + \
            f" / {size(r.kl_divergence_p99, 1, '.4f')}"
        sd = decode.get("decode_tokens_per_s_sd")
        speed = size(r.serve_tokens_per_s, 1, ".1f") + (f" (sd {sd:.1f})" if sd is not None else "")
        times = f"{r.serve_tokens_per_s / base_speed:.2f}" if r.serve_tokens_per_s and base_speed else "-"
        mark = "★" if r.recommended else ("=" if r.tied else "")
        out.append(
            f"| {mark} | {r.label} | {r.serve_kernel or '-'} | {r.serve_method or '-'} | {ratio} | {kl} | "
            f"{recovery_text(r.task_recovery, r.task_recovery_stderr)} | {size(r.artifact_bytes)} | {size(r.weights_bytes)} | "
            f"{size(r.serve_vram_bytes)} / {size(nvml)}{' (offloaded)' if r.serve_offloaded else ''} | "
            f"{guide.get(r.label, '-')} | {size(r.quantize_seconds, 1, '.1f')} | {speed} | {times} | "
            f"{size(r.serve_batch_tokens_per_s, 1, '.1f')} ({batch.get('shape', '-')}) | {size(r.serve_prefill_tokens_per_s, 1, '.0f')} | "
            f"{size(ref_speed, 1, '.1f')} | {size(wall, 1, '.1f')} | {state} |")
    return "\n".join(out)


def serve_notes(comparison, members) -> str:
    """Per member: the kernels its serve load tried and why each was or was
    not taken, and why a speed was timed eagerly where it was."""
    by_id = {j.id: j for j in members}
    out = []
    for r in comparison.rows:
        job = by_id.get(r.job_id)
        if job is None:
            continue
        m = job.metrics or {}
        keys = ("serve_decode_baseline", "serve_batch_baseline") if r.label == "original" else ("serve_decode", "serve_batch")
        for key in keys:
            timing = m.get(key) or {}
            if timing.get("fallback"):
                out.append(f"- {r.label}, {timing.get('shape')}: {timing['method']}: {timing['fallback']}")
        if r.label != "original":
            for trial in m.get("serve_kernel_trials") or []:
                out.append(f"- {r.label}: kernel {trial['backend']} ({trial.get('kernel', '-')}): {trial['result']} "
                           f"in {trial.get('seconds', 0):.1f} s")
            if m.get("serve_dense_reason"):
                out.append(f"- {r.label}: dense because {m['serve_dense_reason']}")
            if m.get("kl_error"):
                out.append(f"- {r.label}: no KL divergence: {m['kl_error']}")
    return "\n".join(out)


def task_table(comparison) -> str:
    from api_client.contract.figures import recovery_text, score_text

    out = []
    for r in comparison.rows:
        for name, t in r.tasks.items():
            score = "-" if t.get("score") is None else score_text(t["score"], t.get("stderr"))
            paired = " (paired)" if t.get("recovery_paired") else ""
            out.append(f"| {r.label} | {name} | {t['metric']} | {score} | "
                       f"{recovery_text(t.get('recovery'), t.get('recovery_stderr'))}{paired} |")
    return "\n".join(["| method | task | metric | score ± 95 % | recovery ± 95 % |", "|---|---|---|---|---|", *out]) if out else ""


def twice_line(first, second) -> str:
    """The same job twice on one device: equal artifact checksums or not."""
    sums = [((j.metrics or {}).get("artifact_sha256") if j else None) for j in (first, second)]
    if None in sums:
        return f"reproducible: not measured ({', '.join(f'{j.id} {j.state}' for j in (first, second) if j)})"
    verdict = "the same artifact" if sums[0] == sums[1] else "different artifacts"
    return (f"reproducible: {first.method} twice on {first.gpu_name} wrote {verdict} "
            f"({first.id} {sums[0][:16]}…, {second.id} {sums[1][:16]}…)")


def gguf_table(members) -> str:
    """Each GGUF file of the group: how it was made and what it measured."""
    out = []
    for job in members:
        metrics = job.metrics or {}
        for fmt, f in (metrics.get("gguf") or {}).items():
            m = (metrics.get("formats") or {}).get(fmt) or {}
            types = ", ".join(f"{t} {n}" for t, n in (f.get("tensor_types") or {}).items())
            out.append(f"| {fmt} | {size(f.get('bytes'))} | {size(f.get('seconds'), 1, '.1f')} | {'yes' if f.get('imatrix') else 'no'} "
                       f"| {m.get('ppl_kernel') or '-'} | {size(m.get('ppl_ratio'), 1, '.4f')} | {size(m.get('serve_tokens_per_s'), 1, '.1f')} "
                       f"| {types} |")
    head = ["| format | file GiB | made in s | imatrix | measured on | ppl ratio | decode tok/s | tensor types |",
            "|---|---|---|---|---|---|---|---|"]
    return "\n".join(head + out) if out else ""


def farm_line(members, worker_started: float) -> str:
    """Each worker's start to its first job, and the idle gaps between jobs
    on one GPU (bench/farm.py's figures, in one line)."""
    f = farm_figures(members, worker_started)
    if not f.get("jobs"):
        return "no job finished"
    firsts = sorted(w["first_job_s"] for w in f["workers"].values())
    gaps = f["gaps"]
    return (f"workers: {len(firsts)}; start → first job: {', '.join(f'{s:.1f}' for s in firsts)} s; "
            f"idle gaps between jobs on one GPU: {len(gaps)}, median {size(median(gaps) if gaps else None, 1, '.2f')} s, "
            f"max {size(max(gaps) if gaps else None, 1, '.2f')} s")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), help="make a random model of this shape at --model if absent")
    p.add_argument("--methods", required=True)
    p.add_argument("--tasks")
    p.add_argument("--limit", type=int)
    p.add_argument("--calib-samples", type=int)
    p.add_argument("--eval-windows", type=int)
    p.add_argument("--eval-seqlen", type=int)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--max-vram", help="each job's GPU memory cap")
    p.add_argument("--max-size")
    p.add_argument("--max-serve-vram")
    p.add_argument("--gpus", default="auto")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--twice", help="a method of --methods to run once more after the group, the same spec on the same "
                                   "device: its artifact checksum against the member's (reproducible?)")
    a = p.parse_args()
    # --timeout counts from here, model making and worker start included, so
    # the table is printed before whatever limit the caller set.
    deadline = time.monotonic() + a.timeout
    if a.shape and not (Path(a.model) / "config.json").exists():
        t = time.perf_counter()
        make_random_llama(Path(a.model), "bfloat16", a.shape)
        print(f"made a random {a.shape}-shaped Llama (bf16) in {time.perf_counter() - t:.0f} s", flush=True)
    client, home = open_farm()
    started = time.time()
    worker = start_worker(a.gpus, home / "worker-compare.log")
    print(f"worker serving its queues {time.time() - started:.1f} s after start", flush=True)
    try:
        base = JobSpec(model=a.model, method="rtn", max_vram=a.max_vram,
                       calib=CalibSpec(samples=a.calib_samples) if a.calib_samples else None,
                       eval=EvalSpec(windows=a.eval_windows, seqlen=a.eval_seqlen, decode_tokens=a.decode_tokens, tasks=a.tasks.split(",") if a.tasks else None, tasks_limit=a.limit))
        group, members = client.compare(str(Path(a.model).resolve()), a.methods.split(","), base,
                                        max_size=a.max_size, max_vram=a.max_serve_vram)
        print(f"group {group.id}: " + ", ".join(f"{j.method}/{j.format} {j.id}" for j in members), flush=True)
        # Priority low: it runs after the group's members, on the same worker.
        again = client.submit(replace(base, model=str(Path(a.model).resolve()), method=a.twice, priority="low")) \
            if a.twice else None
        seen: dict = {}
        while time.monotonic() < deadline:
            group, members = client.group(group.id)
            for j in members + ([client.status(again.id)] if again else []):
                if seen.get(j.id) != (j.state, j.stage):
                    seen[j.id] = (j.state, j.stage)
                    print(f"  {time.time() - started:6.1f} s {j.method}/{j.format} {j.state} {j.stage or ''} {j.error or ''}"[:200], flush=True)
            if all(j.state in ("succeeded", "failed", "cancelled") for j in members + ([client.status(again.id)] if again else [])):
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    group, members = client.group(group.id)
    result = compare(group, members)
    gpu = next((j.gpu_name for j in members if j.gpu_name), "?")
    print(f"\n## compare {Path(a.model).name} ({a.methods}) on {gpu}\n")
    print(table(result, members, GUIDE_7B if a.shape == "7b" else {}))
    print(f"\nrecommended: {result.why}\n")
    print(serve_notes(result, members) + "\n")
    print(task_table(result))
    print(gguf_table(members))
    if again:
        print("\n" + twice_line(next((j for j in members if j.method == a.twice), None), client.status(again.id)))
    print("\n" + farm_line(members, started))
    if a.json_out:
        from api_client.infra.db.jobs import to_dict

        Path(a.json_out).write_text(json.dumps({"comparison": result.as_dict(), "jobs": [to_dict(j) for j in members]},
                                               indent=1, default=str))


if __name__ == "__main__":
    main()
