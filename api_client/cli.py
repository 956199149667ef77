"""`qfarm`: the command line, a thin layer over api_client.Client."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from api_client.config import redact
from api_client.errors import QFarmError, first_line, printable

STAGES = ("loading", "calibrating", "quantizing", "evaluating", "uploading")


def _client():
    from api_client.client import Client

    return Client()


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """qfarm: a team's LLM quantization farm.

    Settings come from QFARM_BROKER_URL, QFARM_DATABASE_URL, QFARM_STORAGE_URL
    and QFARM_S3_ENDPOINT_URL (see the README).
    """


@cli.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help="gptq, awq, rtn, fp8, nf4, fp4 or int8 (`qfarm methods` lists them).")
@click.option("--format", "fmt", help="Artifact format; the method's first format by default.")
@click.option("--bits", type=int)
@click.option("--group-size", type=int, help="Columns per scale; -1 for one scale per output channel.")
@click.option("--act-order/--no-act-order", default=None, help="GPTQ: quantize columns by activation size.")
@click.option("--symmetric/--asymmetric", default=None, help="GPTQ/RTN: symmetric scales, or a zero point.")
@click.option("--dampening", type=float, help="GPTQ: Hessian dampening fraction.")
@click.option("--zero-point/--no-zero-point", default=None, help="AWQ: asymmetric scales with a zero point.")
@click.option("--double-quant/--no-double-quant", default=None, help="NF4/FP4: quantize the scales too.")
@click.option("--compute-dtype", help="NF4/FP4: auto, float16, bfloat16 or float32.")
@click.option("--threshold", type=float, help="INT8: outlier threshold.")
@click.option("--calib", help="Calibration text: builtin, a .txt/.jsonl file, s3://bucket/key or hf:NAME[:CONFIG][@SPLIT].")
@click.option("--calib-samples", type=int, help="Calibration windows (default 128).")
@click.option("--calib-seqlen", type=int, help="Tokens per calibration window (default 512).")
@click.option("--eval", "eval_source", help="Evaluation text, same forms as --calib (default: builtin).")
@click.option("--eval-seqlen", type=int, help="Tokens per perplexity window (default: the model's context, at most 2048).")
@click.option("--eval-windows", type=int, help="At most this many perplexity windows (default: the whole text).")
@click.option("--decode-tokens", type=int, default=64, show_default=True, help="Tokens generated to time decoding (0: skip).")
@click.option("--max-vram", help="Cap on the GPU memory the job may use, e.g. 16GiB (enforced).")
@click.option("--weights", type=click.Choice(["auto", "gpu", "cpu"]), default="auto", show_default=True,
              help="Where the full-precision weights live while quantizing; cpu onloads one layer at a time.")
@click.option("--allow-remote-code", is_flag=True,
              help="Run the model's own code (auto_map, *.py) and publish it; needs a worker started with --allow-remote-code.")
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar; exit non-zero if it fails.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def submit(model, method, fmt, bits, group_size, act_order, symmetric, dampening, zero_point, double_quant,
           compute_dtype, threshold, calib, calib_samples, calib_seqlen, eval_source, eval_seqlen, eval_windows,
           decode_tokens, max_vram, weights, allow_remote_code, wait, as_json):
    """Queue MODEL (a local directory, an s3:// prefix or a Hugging Face id) for quantization."""
    from api_client.spec import CalibSpec, EvalSpec, JobSpec

    params = dict(bits=bits, group_size=group_size, act_order=act_order, symmetric=symmetric, dampening=dampening,
                  zero_point=zero_point, double_quant=double_quant, compute_dtype=compute_dtype, threshold=threshold)
    calib_given = {k: v for k, v in dict(source=calib, samples=calib_samples, seqlen=calib_seqlen).items() if v is not None}
    eval_spec = EvalSpec(**{k: v for k, v in dict(source=eval_source, seqlen=eval_seqlen, windows=eval_windows,
                                                  decode_tokens=decode_tokens).items() if v is not None})
    spec = JobSpec(model=model, method=method, params=params, format=fmt,
                   calib=CalibSpec(**calib_given) if calib_given else None, eval=eval_spec,
                   max_vram=max_vram, weights=weights, allow_remote_code=allow_remote_code)
    client = _client()
    job = client.submit(spec)
    if not wait:
        if as_json:
            _emit_json({"id": job.id, "state": job.state})
        else:
            click.echo(job.id)
        return
    if not as_json:
        click.echo(f"{job.id} queued")
    final = _follow(client, job.id, quiet=as_json)
    if as_json:
        from api_client.db.jobs import to_dict

        _emit_json(to_dict(final))
    sys.exit(0 if final.state == "succeeded" else 1)


def _follow(client, job_id: str, quiet: bool = False):
    """Show the job's stages as a progress bar until it ends."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, quiet=quiet)
    job = client.status(job_id)
    from worker import methods

    stages = [s for s in STAGES if s != "calibrating" or methods.get(job.method).calibrated]
    with Progress(TextColumn("[bold]{task.fields[job]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(job.state, total=len(stages) + 1, job=job.id)
        for ev in client.watch(job_id):
            done = stages.index(ev.stage) if ev.stage in stages else (len(stages) + 1 if ev.state == "succeeded" else None)
            label = ev.stage or ev.state
            if ev.message and ev.state not in ("queued",):
                label = f"{label}: {ev.message}"
            bar.update(task, description=label[:100], **({} if done is None else {"completed": done}))
            if ev.state in ("failed", "cancelled"):
                bar.stop()
    final = client.status(job_id)
    if not quiet:
        if final.state == "succeeded":
            console.print(f"succeeded: perplexity {final.ppl_baseline:.4g} → {final.ppl_quantized:.4g} "
                          f"(ratio {final.ppl_ratio:.4f}), artifact {final.artifact_uri}")
        else:
            console.print(f"{final.state}: {final.error or ''}".rstrip(": "))
    return final


@cli.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
def status(job, as_json):
    """Show a job (its id or a unique prefix of it)."""
    from api_client import render
    from api_client.db.jobs import to_dict

    found = _client().status(job)
    if as_json:
        _emit_json(to_dict(found))
    else:
        click.echo("\n".join(render.status_lines(found)))


@cli.command("list")
@click.option("--state", help="queued, running, succeeded, failed or cancelled.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--mine", is_flag=True, help="Only jobs submitted by you.")
@click.option("--json", "as_json", is_flag=True)
def list_(state, limit, mine, as_json):
    """List jobs, newest first."""
    from api_client import render
    from api_client.db.jobs import to_dict

    client = _client()
    found = client.list(state=state, limit=limit, user=client.settings.user if mine else None)
    if as_json:
        _emit_json([to_dict(j) for j in found])
        return
    rows = [("ID", "STATE", "STAGE", "METHOD", "USER", "CREATED", "PPL RATIO", "MODEL")] + [render.list_row(j) for j in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


@cli.command()
@click.argument("job")
def watch(job):
    """Print a job's events as they happen, until it ends."""
    from api_client.db.jobs import aware

    client = _client()
    final_state = None
    for ev in client.watch(job):
        stage = f" [{ev.stage}]" if ev.stage else ""
        msg = f" {ev.message}" if ev.message else ""
        click.echo(f"{aware(ev.at).strftime('%H:%M:%S')} {ev.state}{stage}{msg}")
        final_state = ev.state
    sys.exit(0 if final_state == "succeeded" else 1)


@cli.command()
@click.argument("job")
@click.option("--force", is_flag=True, help="Cancel another user's job (the event records who did).")
def cancel(job, force):
    """Cancel a queued or running job (your own, or another's with --force)."""
    done = _client().cancel(job, force=force)
    if done.signalled:
        click.echo(f"{done.job.id} {done.job.state}")
    else:
        click.echo(f"{done.job.id} {done.job.state} in the database; its worker could not be signalled at once "
                   f"({done.reason}): it stops the job at its next heartbeat or stage")


@cli.command()
@click.argument("job")
def requeue(job):
    """Send a queued job's message again (the broker lost it), or hand a
    running job whose worker is dead to the next worker."""
    found = _client().requeue(job)
    click.echo(f"{found.id} {found.state} on {found.queue}")


@cli.command()
@click.option("--older-than", default="1d", show_default=True, help="Age of the newest object, e.g. 12h, 1d, 3600s.")
@click.option("--yes", is_flag=True, help="Delete them; without it, only list them (a dry run).")
def gc(older_than, yes):
    """Remove artifact uploads that never got their manifest (cut short)."""
    from api_client import render

    client = _client()
    found = client.gc(parse_age(older_than), delete=yes)
    for a in found:
        click.echo(f"{'deleted' if yes else 'would delete'} {client.settings.storage_url.rstrip('/')}/{a.prefix} "
                   f"({a.objects} objects, {render.size(a.bytes)}, last written {render.when(a.newest)})")
    total = sum(a.bytes for a in found)
    click.echo(f"{len(found)} incomplete artifacts, {render.size(total)}" + ("" if yes or not found else "; pass --yes to delete them"))


def parse_age(text: str) -> float:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise QFarmError(f"--older-than takes a number with s, m, h or d (e.g. 1d), not {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True)
def workers_(as_json):
    """Live workers: host, GPU, queues, current job, last heartbeat."""
    from api_client import render
    from api_client.db.workers import to_dict

    found = _client().workers()
    if as_json:
        _emit_json([to_dict(w) for w in found])
        return
    rows = [("NAME", "HOST", "GPU", "JOB", "DONE", "HEARTBEAT")] + [render.worker_row(w) for w in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@cli.command()
@click.argument("job")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def download(job, dest):
    """Download a job's artifact into DEST, checking every file's sha256."""
    manifest = _client().download(job, dest, progress=lambda e: click.echo(f"  {e['path']} ({e['bytes']} bytes) ok", err=True))
    click.echo(f"{len(manifest['files'])} files verified in {dest}")


@cli.command()
def methods():
    """List the methods, their formats and their options."""
    from worker import methods as registry
    from worker.methods.base import cli_flags

    for name in registry.names():
        m = registry.get(name)
        click.echo(f"{name}: {m.summary}")
        click.echo(f"    formats: {', '.join(m.formats)}; calibration: {'yes' if m.calibrated else 'no'}")
        for f in m.Params.knobs():
            choices = f.metadata.get("choices")
            allowed = f" ({'/'.join(map(str, choices))})" if choices else ""
            click.echo(f"    {cli_flags(f)}{allowed}, default {f.default}: {f.metadata.get('help', '')}")


@cli.group()
def worker():
    """Run GPU workers."""


@worker.command("start")
@click.option("--gpus", default="auto", show_default=True, help="all, cpu, auto (all GPUs, or the CPU without one) or indices: 0,1.")
@click.option("--allow-remote-code", is_flag=True,
              help="Also take jobs that run a model's own code (auto_map, *.py): only on hosts you trust with it.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker_start(gpus, allow_remote_code, loglevel):
    """Start one worker process per GPU (concurrency 1, pinned with CUDA_VISIBLE_DEVICES)."""
    from api_client import queue
    from api_client.config import Settings
    from api_client.db import Database, jobs
    from worker import launcher

    settings = Settings.from_env()
    db = Database(settings.database_url)
    try:
        db.check()
        farm = jobs.farm_id(db)
    finally:
        db.dispose()
    plans = launcher.plan(gpus, farm, remote_code=allow_remote_code)
    queue.check_broker(settings.broker_url)
    sys.exit(launcher.run(plans, loglevel, echo=lambda m: click.echo(m, err=True)))


@cli.group()
def db():
    """The job database."""


@db.command("upgrade")
def db_upgrade():
    """Create or migrate the database schema (Alembic)."""
    from api_client.config import Settings
    from api_client.db import Database

    database = Database(Settings.from_env().database_url)
    try:
        head = database.upgrade()
    except Exception as exc:
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise QFarmError(f"cannot migrate the database at {database.display_url}: {reason}") from None
    click.echo(f"database at {database.display_url} is at schema {head}")


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except QFarmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback on request
        if os.environ.get("QFARM_DEBUG"):
            raise
        click.echo(f"error: {type(exc).__name__}: {redact(printable(first_line(exc)))} (set QFARM_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
