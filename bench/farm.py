"""The farm's throughput (issue 10): every GPU of a host through one
`qfarm worker start --gpus all`, a `qfarm compare` group on a big model and
a batch of mixed jobs on a small one, submitted at once; the figures are read
back from the job rows.

    python -m bench.farm --small /tmp/llama1b --big /tmp/llama7b --jobs 16 --compare gptq,awq,nf4,int8,fp8 \
        --tasks builtin --limit 100 --s3

Printed at the end, per GPU and for the farm:
- time from `qfarm worker start` to the worker answering and to its first job;
- busy fraction while the queue is non-empty: from the GPU's first job to the
  moment the last queued job was taken, the share of time it ran a job;
- the idle gaps between one job's end and the next one's start on that GPU;
- makespan (first job's start to last job's end) against the sum of job
  times divided by the GPU count;
- the model cache: with --s3 the small model is read from an `s3://` prefix
  (moto's server here, unless QFARM_S3_ENDPOINT_URL names one), so the first
  job of the host fetches it and the others should hit the cache.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api_client import JobSpec
from api_client.contract import catalog
from api_client.contract.spec import CalibSpec, EvalSpec
from api_client.infra import queue
from api_client.infra.db import jobs
from api_client.infra.db.jobs import aware
from bench.bench import make_random_llama, open_farm

SMALL_METHODS = ("gptq", "nf4", "awq", "rtn")


def seconds(t) -> float:
    return aware(t).timestamp()


def farm_figures(members: list, t0: float, worker_rows: list | None = None) -> dict:
    """The issue's figures from the job rows (see the module's docstring)."""
    done = [j for j in members if j.started_at and j.finished_at]
    by_worker: dict[str, list] = {}
    for j in done:
        by_worker.setdefault(j.worker or "?", []).append((seconds(j.started_at), seconds(j.finished_at), j))
    if not done:
        return {"workers": {}, "gaps": [], "jobs": 0}
    # The queue is non-empty until the last job is taken.
    queue_empty = max(s for spans in by_worker.values() for s, _, _ in spans)
    ready = {w.name: seconds(w.started_at) - t0 for w in worker_rows or [] if w.started_at}
    out: dict = {"workers": {}, "gaps": []}
    for name, spans in sorted(by_worker.items(), key=lambda kv: kv[1][0][2].gpu_index or 0):
        spans.sort(key=lambda s: s[0])
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(spans) if b[0] <= queue_empty]
        window = queue_empty - spans[0][0]
        busy = sum(max(0.0, min(end, queue_empty) - start) for start, end, _ in spans)
        # A GPU still running its first job when the queue empties was busy all along.
        fraction = 1.0 if window <= 0 else min(1.0, busy / window)
        out["workers"][name] = {
            "gpu": spans[0][2].gpu_index, "jobs": len(spans), "ready_s": ready.get(name),
            "first_job_s": spans[0][0] - t0, "busy_fraction": fraction, "gaps": gaps,
            "job_seconds": sum(end - start for start, end, _ in spans),
        }
        out["gaps"] += gaps
    first, last = min(seconds(j.started_at) for j in done), max(seconds(j.finished_at) for j in done)
    total = sum(seconds(j.finished_at) - seconds(j.started_at) for j in done)
    out.update(jobs=len(done), makespan_s=last - first, job_seconds=total,
               ideal_s=total / len(by_worker), efficiency=total / len(by_worker) / (last - first))
    cache: dict[str, int] = {}
    for j in done:
        c = (j.metrics or {}).get("model_cache")
        if c:
            cache[c] = cache.get(c, 0) + 1
    out["cache"] = cache
    out["fetch_seconds"] = sorted(round((j.metrics or {}).get("model_fetch_seconds") or 0, 2) for j in done
                                  if (j.metrics or {}).get("model_cache") in ("hit", "miss"))
    return out


def figures_text(f: dict) -> str:
    if not f.get("jobs"):
        return "no job finished"
    lines = ["| worker | GPU | jobs | ready s | first job s | busy while queued | gaps (median / max s) | job s |",
             "|---|---|---|---|---|---|---|---|"]
    for name, w in f["workers"].items():
        g = w["gaps"]
        gap = f"{median(g):.2f} / {max(g):.2f}" if g else "-"
        ready = "-" if w["ready_s"] is None else f"{w['ready_s']:.1f}"
        lines.append(f"| {name.split('@')[0]} | {w['gpu']} | {w['jobs']} | {ready} | {w['first_job_s']:.1f} | "
                     f"{w['busy_fraction']:.3f} | {gap} | {w['job_seconds']:.0f} |")
    g = f["gaps"]
    lines += ["", f"jobs {f['jobs']}; idle gaps {len(g)}: median {median(g):.2f} s, max {max(g):.2f} s" if g else "no gaps",
              f"makespan {f['makespan_s']:.1f} s for {f['job_seconds']:.0f} s of job time on {len(f['workers'])} GPUs: "
              f"ideal {f['ideal_s']:.1f} s, ratio {f['efficiency']:.3f}",
              f"model cache: {f['cache'] or 'not used'}; fetch seconds {f['fetch_seconds']}"]
    return "\n".join(lines)


def s3_model(model: Path, stack: list) -> str:
    """Upload `model` to an S3 prefix (moto's server unless
    QFARM_S3_ENDPOINT_URL is set) and return its s3:// URL."""
    if not os.environ.get("QFARM_S3_ENDPOINT_URL"):
        from tests.support.moto import CREDENTIALS, MotoS3

        home = Path(os.environ.get("QFARM_HOME", "/tmp"))
        server = MotoS3(home / "moto").start()
        stack.append(server)
        os.environ.update(QFARM_S3_ENDPOINT_URL=server.endpoint, **CREDENTIALS)
    from api_client.infra.storage.s3 import s3_client

    client = s3_client(os.environ["QFARM_S3_ENDPOINT_URL"])
    bucket = "qfarm-bench"
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    t = time.perf_counter()
    for f in sorted(model.iterdir()):
        if f.is_file():
            client.upload_file(str(f), bucket, f"models/{model.name}/{f.name}")
    print(f"uploaded {model.name} to s3://{bucket}/models/{model.name}/ in {time.perf_counter() - t:.1f} s", flush=True)
    # Workers read s3:// models only from prefixes the farm allows.
    os.environ.setdefault("QFARM_INPUT_PREFIXES", f"s3://{bucket}/models/")
    return f"s3://{bucket}/models/{model.name}/"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--small", required=True, help="the mixed jobs' model (a random 1.1B-shaped Llama is made if absent)")
    p.add_argument("--big", help="the compare group's model (a random 7B-shaped Llama is made if absent)")
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--methods", default=",".join(SMALL_METHODS), help="the mixed jobs' methods, in turn")
    p.add_argument("--compare", default="gptq,awq,nf4,int8,fp8")
    p.add_argument("--tasks")
    p.add_argument("--limit", type=int)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--eval-windows", type=int, default=16)
    p.add_argument("--small-eval-windows", type=int, default=8)
    p.add_argument("--s3", action="store_true", help="read the small model from an s3:// prefix (the model cache)")
    p.add_argument("--gpus", default="all")
    p.add_argument("--json", dest="json_out")
    p.add_argument("--timeout", type=float, default=1800)
    a = p.parse_args()
    deadline = time.monotonic() + a.timeout
    for path, shape in ((Path(a.small), "1.1b"), (Path(a.big) if a.big else None, "7b")):
        if path and not (path / "config.json").exists():
            t = time.perf_counter()
            make_random_llama(path, "bfloat16", shape)
            print(f"made a random {shape}-shaped Llama (bf16) in {time.perf_counter() - t:.0f} s", flush=True)
    stack: list = []  # servers started here, closed at the end
    small = s3_model(Path(a.small), stack) if a.s3 else str(Path(a.small).resolve())
    client, home = open_farm()
    # The queue is full before `qfarm worker start`, as when a farm restarts
    # with jobs waiting: the time to each worker's first job is then the
    # worker's own. Submit refuses FP8 until a worker of its compute
    # capability answers; the host's GPUs (NVML) say what that worker will be.
    from worker.gpu import nvml_gpus
    from worker.launcher import queues_for_device

    gpus = nvml_gpus()
    if gpus:
        will_serve = set(queues_for_device(client.farm(), min(g.capability for g in gpus)))
        queue.served_queues = lambda *_a, **_k: will_serve
    t_submit = time.time()
    calib = CalibSpec(samples=a.calib_samples)
    members: list = []
    if a.big:
        base = JobSpec(model=a.big, method="rtn", calib=calib, eval=EvalSpec(
            windows=a.eval_windows, tasks=a.tasks.split(",") if a.tasks else None, tasks_limit=a.limit))
        group, members = client.compare(str(Path(a.big).resolve()), a.compare.split(","), base)
        print(f"group {group.id}: " + ", ".join(f"{j.method}/{j.format}" for j in members), flush=True)
    methods = a.methods.split(",")
    for i in range(a.jobs):
        m = methods[i % len(methods)]
        members.append(client.submit(JobSpec(model=small, method=m, calib=calib if catalog.get(m).calibrated else None,
                                             eval=EvalSpec(windows=a.small_eval_windows))))
    print(f"submitted {len(members)} jobs in {time.time() - t_submit:.1f} s", flush=True)
    log = open(home / "worker-farm.log", "w")
    t0 = time.time()
    launcher = subprocess.Popen([sys.executable, "-m", "api_client.cli", "worker", "start", "--gpus", a.gpus],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        seen: dict = {}
        while time.monotonic() < deadline:
            members = [client.status(j.id) for j in members]
            for j in members:
                if seen.get(j.id) != (j.state, j.stage):
                    seen[j.id] = (j.state, j.stage)
                    print(f"  {time.time() - t0:6.1f} s {j.id[:8]} {j.method}/{j.format} {j.state} {j.stage or ''} "
                          f"{j.worker or ''} {j.error or ''}"[:200], flush=True)
            if all(j.state in ("succeeded", "failed", "cancelled") for j in members):
                break
            if launcher.poll() is not None:
                print("the workers stopped:\n" + (home / "worker-farm.log").read_text()[-4000:], flush=True)
                break
            time.sleep(1)
    finally:
        os.killpg(launcher.pid, signal.SIGTERM)
        launcher.wait(60)
        for server in stack:
            server.close()
    members = [client.status(j.id) for j in members]
    f = farm_figures(members, t0, client.workers(include_gone=True))
    gpu = next((j.gpu_name for j in members if j.gpu_name), "?")
    print(f"\n## farm: {len(members)} jobs on {gpu}\n")
    print("| job | method | GPU | start s | job s | cache | state |\n|---|---|---|---|---|---|---|")
    for j in sorted(members, key=lambda j: j.started_at or j.created_at):
        start = f"{seconds(j.started_at) - t0:.1f}" if j.started_at else "-"
        dur = f"{seconds(j.finished_at) - seconds(j.started_at):.1f}" if j.started_at and j.finished_at else "-"
        print(f"| {j.id[:8]} | {j.method}/{j.format} {'(compare)' if j.group_id else ''} | {j.gpu_index} | {start} | {dur} | "
              f"{(j.metrics or {}).get('model_cache', '-')} | {j.state if j.state != 'failed' else 'failed: ' + (j.error or '')[:80]} |")
    print()
    print(figures_text(f))
    if a.json_out:
        Path(a.json_out).write_text(json.dumps({"figures": f, "t0": t0, "jobs": [jobs.to_dict(j) for j in members]},
                                               indent=1, default=str))


if __name__ == "__main__":
    main()
