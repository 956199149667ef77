"""`qfarm`: the command line, a thin layer over api_client.Client."""

from __future__ import annotations

import importlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from api_client import config
from api_client.contract import catalog
from api_client.contract.spec import CPU_DEFAULTS, GPU_DEFAULTS, PRIORITY_NAMES, WEIGHTS_PLACEMENTS, CalibSpec, EvalSpec
from api_client.errors import QFarmError, first_line, printable
from api_client.redaction import redact

if TYPE_CHECKING:
    from api_client.app.client import Client
    from api_client.app.views import Job

F = TypeVar("F", bound=Callable[..., Any])


class QFarmGroup(click.Group):
    """The `qfarm` group: a QFarmError becomes one `error: …` line and exit
    status 2, wherever the command runs (the shell, Click's CliRunner), and
    subcommands named in `lazy` load from their module only when used (the
    `worker` commands live in worker/cli.py, which a client install may lack
    the libraries of)."""

    lazy: ClassVar[dict[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            module, _, attr = self.lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except QFarmError as exc:
            click.echo(f"error: {redact(str(exc))}", err=True)
            ctx.exit(2)


def _client() -> Client:
    from api_client.app.client import Client

    return Client()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group(cls=QFarmGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qfarm", message="qfarm %(version)s")
def cli() -> None:
    """qfarm: a team's LLM quantization farm.

    Settings come from QFARM_BROKER_URL, QFARM_DATABASE_URL, QFARM_STORAGE_URL
    and QFARM_S3_ENDPOINT_URL, among others: `qfarm config` shows them all
    (and docs/operations.md, "Configuration").
    """


def method_options(fn: F) -> F:
    """The method options of `qfarm submit`, generated from the catalog: a
    flag per option name, its type, and help naming the methods that take it
    with the values and default of each. Click passes them on in `params`."""
    from api_client.contract.catalog.options import cli_name, off_flag

    users: dict[str, list] = {}
    for name in catalog.names():
        for f in catalog.get(name).options.knobs():
            users.setdefault(f.name, []).append((name, f))
    for field_name in sorted(users, reverse=True):  # decorators apply bottom-up
        first = max((f for _, f in users[field_name]), key=lambda f: len(f.metadata.get("help", "")))
        per_method = "; ".join(
            f"{m}: {'/'.join(map(str, f.metadata['choices'])) + ', ' if f.metadata.get('choices') else ''}default {f.default}"
            for m, f in users[field_name])
        text = first.metadata.get("help", "")
        help_text = f"{text[:1].upper()}{text[1:]} ({per_method})."
        if isinstance(first.default, bool):
            fn = click.option(f"{cli_name(field_name)}/{off_flag(first)}", field_name, default=None, help=help_text)(fn)
        else:
            kind = type(first.default) if type(first.default) in (int, float) else str
            fn = click.option(cli_name(field_name), field_name, type=kind, default=None, help=help_text)(fn)
    return fn


_COMMON = ("calib", "calib_samples", "calib_seqlen", "eval_source", "eval_seqlen", "eval_windows", "decode_tokens",
           "tasks", "tasks_dir", "limit", "max_vram", "weights", "priority", "allow_remote_code")


def job_options(fn: F) -> F:
    """The options every job takes, for `submit` and `compare` alike."""
    options = [
        click.option("--calib", help="Calibration text: builtin, a .txt/.jsonl file, s3://bucket/key or hf:NAME[:CONFIG][@SPLIT]."),
        click.option("--calib-samples", type=int, help=f"Calibration windows (default {GPU_DEFAULTS.calib_samples} on a GPU "
                                                       f"worker, {CPU_DEFAULTS.calib_samples} on a CPU worker)."),
        click.option("--calib-seqlen", type=int, help=f"Tokens per calibration window (default {GPU_DEFAULTS.calib_seqlen})."),
        click.option("--eval", "eval_source", help="Evaluation text, same forms as --calib (default: builtin)."),
        click.option("--eval-seqlen", type=int, help=f"Tokens per perplexity window (default: the model's context, at most "
                                                     f"{GPU_DEFAULTS.eval_seqlen} on a GPU worker, {CPU_DEFAULTS.eval_seqlen} on a CPU worker)."),
        click.option("--eval-windows", type=int, help=f"At most this many perplexity windows (default: the whole text on a GPU "
                                                      f"worker, {CPU_DEFAULTS.eval_windows} on a CPU worker)."),
        click.option("--decode-tokens", type=int, help=f"Tokens generated to time decoding (default {EvalSpec.decode_tokens}; 0: skip)."),
        click.option("--tasks", help="lm-evaluation-harness tasks to score both models on, e.g. builtin or builtin,arc_easy "
                                     "(builtin: qfarm's own offline task, see `qfarm methods`; others need the hub or --tasks-dir)."),
        click.option("--tasks-dir", help="A directory of lm-eval task YAML and the data files they name (relative to it); "
                                         "uploaded with the job."),
        click.option("--limit", type=int, help="At most this many items of each task."),
        click.option("--max-vram", help="Cap on the GPU memory the job may use, e.g. 16GiB (enforced)."),
        click.option("--weights", type=click.Choice(WEIGHTS_PLACEMENTS), default="auto", show_default=True,
                     help="Where the full-precision weights live while quantizing; cpu onloads one layer at a time."),
        click.option("--priority", type=click.Choice(PRIORITY_NAMES), default="normal", show_default=True,
                     help="Order in the queue: a high job is taken before normal and low ones submitted earlier."),
        click.option("--allow-remote-code", is_flag=True,
                     help="Run the model's own code (auto_map, *.py) and publish it; needs a worker started with --allow-remote-code."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _job_spec(model: str, method: str, fmt: str | None, options: dict[str, Any]) -> Any:
    """A JobSpec from the command's options; the method's own options are
    what remains in `options` after the common ones are taken."""
    from api_client.contract.spec import JobSpec

    common = {k: options.pop(k) for k in _COMMON}
    calib_given = {k: v for k, v in dict(source=common["calib"], samples=common["calib_samples"],
                                         seqlen=common["calib_seqlen"]).items() if v is not None}
    eval_given = {k: v for k, v in dict(source=common["eval_source"], seqlen=common["eval_seqlen"],
                                        windows=common["eval_windows"], decode_tokens=common["decode_tokens"],
                                        tasks=common["tasks"].split(",") if common["tasks"] is not None else None,
                                        tasks_dir=common["tasks_dir"], tasks_limit=common["limit"]).items() if v is not None}
    return JobSpec(model=model, method=method, params=options, format=fmt,
                   calib=CalibSpec(**calib_given) if calib_given else None, eval=EvalSpec(**eval_given),
                   max_vram=common["max_vram"], weights=common["weights"], allow_remote_code=common["allow_remote_code"],
                   priority=common["priority"])


@cli.command()
@click.argument("model")
@click.option("--method", "-m", required=True, help=f"{', '.join(catalog.names())} (`qfarm methods` describes them).")
@click.option("--format", "fmt", help="Artifact format; the method's first format by default.")
@method_options
@job_options
@click.option("--wait", is_flag=True, help="Follow the job with a progress bar; exit non-zero if it fails.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (with --wait, its final row).")
def submit(model: str, method: str, fmt: str | None, wait: bool, as_json: bool, **options: Any) -> None:
    """Queue MODEL (a local directory, an s3:// prefix or a Hugging Face id) for quantization."""
    spec = _job_spec(model, method, fmt, options)
    client = _client()
    job = client.submit(spec)
    if job.estimates and not as_json:
        from api_client.cli.render import estimated

        click.echo(f"estimated {estimated(job)}", err=True)
    if not wait:
        if as_json:
            _emit_json({"id": job.id, "state": job.state})
        else:
            click.echo(job.id)
        return
    with _left_running(client, job.id, f"qfarm watch {job.id}"):
        if not as_json:
            click.echo(f"{job.id} queued")
        final = _follow(client, job.id, quiet=as_json)
    if as_json:
        from api_client.app.views import job_dict

        _emit_json(job_dict(final))
    sys.exit(0 if final.state == "succeeded" else 1)


@cli.command()
@click.argument("model")
@click.option("--methods", "methods_", required=True,
              help="Methods to compare, comma-separated, each NAME or NAME:FORMAT, e.g. gptq,awq,nf4,int8,fp8,gptq:gptq.")
@click.option("--max-size", help="Recommend only artifacts at most this large, e.g. 4GiB.")
@click.option("--max-serve-vram", "max_serve_vram",
              help="Recommend only methods whose measured serve VRAM is at most this, e.g. 6GiB.")
@job_options
@click.option("--wait", is_flag=True, help="Wait for every member, then print the table.")
@click.option("--wide", is_flag=True, help="Every column of the table (format, weights, kernel, quantize time).")
@click.option("--json", "as_json", is_flag=True, help="Print the group (with --wait, the table) as JSON.")
def compare(model: str, methods_: str, max_size: str | None, max_serve_vram: str | None, wait: bool, wide: bool,
            as_json: bool, **options: Any) -> None:
    """Quantize MODEL with several methods at once, as one group, and print
    the table: accuracy kept, size, memory and speed to serve, with the
    recommended row. Members run in parallel on a farm with free GPUs."""
    import time

    spec = _job_spec(model, "rtn", None, options)
    client = _client()
    group, members = client.compare(model, [m.strip() for m in methods_.split(",") if m.strip()], spec,
                                     max_size=max_size, max_vram=max_serve_vram)
    if not wait:
        if as_json:
            _emit_json({"group": group.id, "jobs": [{"id": j.id, "method": j.method, "format": j.format} for j in members]})
        else:
            click.echo(group.id)
            for j in members:
                click.echo(f"  {j.id} {j.method}/{j.format}", err=True)
        return
    if not as_json:
        click.echo(f"group {group.id}: {len(members)} jobs queued, slowest first", err=True)
    seen: dict[str, str] = {}
    due = _every(10.0)
    with _left_running(client, group.id, f"qfarm status {group.id}"):
        while True:
            group, members = client.group(group.id)
            for j in members:
                if seen.get(j.id) != j.state and not as_json:
                    click.echo(f"  {j.method}/{j.format} {j.id}: {j.state}" + (f" ({j.error})" if j.error else ""), err=True)
                seen[j.id] = j.state
            # While nothing runs, say why: no worker for the queue, or the jobs ahead.
            if not any(j.state == "running" for j in members) and due():
                waiting = next((w for j in members if (w := client.waiting(j.id))), None)
                if waiting and seen.get("") != waiting and not as_json:
                    click.echo(f"  {waiting}", err=True)
                seen[""] = waiting or ""
            if all(j.state in ("succeeded", "failed", "cancelled") for j in members):
                break
            time.sleep(2)
    _print_comparison(group, members, as_json, wide)
    sys.exit(0 if any(j.state == "succeeded" for j in members) else 1)


def _print_comparison(group: Any, members: list[Any], as_json: bool, wide: bool = False) -> None:
    from api_client.app.compare import compare as build
    from api_client.cli import render

    table = build(group, members)
    if as_json:
        _emit_json(table.as_dict())
        return
    from rich.console import Console

    # Narrow: the terminal's width, at most NARROW columns (NARROW where
    # output is no terminal); --wide: every column, unwrapped.
    console = Console()
    width = 240 if wide else min(console.width, render.NARROW) if console.is_terminal else render.NARROW
    console = Console(width=width)
    console.print(render.comparison_table(table, wide))
    for note in render.comparison_notes(table, wide):
        console.print(note, soft_wrap=True, markup=False, highlight=False)
    console.print(f"recommended: {table.why}")


def _every(seconds: float) -> Callable[[], bool]:
    """True at the first call and then once per `seconds`: why a job waits
    reads the queue, which is not worth doing at every poll."""
    import time

    last = [float("-inf")]

    def due() -> bool:
        if time.monotonic() - last[0] < seconds:
            return False
        last[0] = time.monotonic()
        return True

    return due


@contextmanager
def _left_running(client: Client, ref: str, again: str) -> Iterator[None]:
    """Ctrl-C stops the following, not the job: say where it stays."""
    try:
        yield
    except KeyboardInterrupt:
        from api_client.app.views import GROUP_PREFIX

        if ref.startswith(GROUP_PREFIX):
            states = sorted({j.state for j in client.group(ref)[1]})
            where = f"group {ref}, whose jobs stay {'/'.join(states)}"
        else:
            where = f"job {ref}, which stays {client.status(ref).state}"
        click.echo(f"\nstopped following {where}: `{again}` looks again, `qfarm cancel` stops a job", err=True)
        sys.exit(130)


def _follow(client: Client, job_id: str, quiet: bool = False) -> Job:
    """Show the job's stages as a progress bar until it ends; while it is
    queued, why it waits; the clock counts from the job's start."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from api_client.cli import render

    console = Console(stderr=True, quiet=quiet)
    job = client.status(job_id)
    from api_client.contract.states import Stage

    stages = [s.value for s in Stage.of(job.calib is not None)]
    with Progress(TextColumn("[bold]{task.fields[job]}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.description}"), TextColumn("{task.fields[clock]}"), console=console) as bar:
        task = bar.add_task(job.state, total=len(stages) + 1, job=job.id, clock=render.clock(job))
        due = _every(5.0)

        def idle(now: Job) -> None:
            label = client.waiting(now.id) if now.state == "queued" and due() else None
            bar.update(task, description=label[:100] if label else None, clock=render.clock(now))

        idle(job)
        for ev in client.watch(job_id, on_idle=idle):
            done = stages.index(ev.stage) if ev.stage in stages else (len(stages) + 1 if ev.state == "succeeded" else None)
            label = ev.stage or ev.state
            if ev.state == "queued" and not ev.stage:
                label = client.waiting(job_id) or label
            elif ev.message:
                label = f"{label}: {ev.message}"
            if done is None:
                bar.update(task, description=label[:100])
            else:
                bar.update(task, description=label[:100], completed=done)
            if ev.state in ("failed", "cancelled"):
                bar.stop()
    final = client.status(job_id)
    if not quiet:
        if final.state == "succeeded":
            from api_client.contract.figures import num

            console.print(f"succeeded: perplexity {num(final.ppl_baseline)} → {num(final.ppl_quantized)} "
                          f"(ratio {num(final.ppl_ratio, '.4f')}), artifact {final.artifact_uri}")
        else:
            console.print(f"{final.state}: {final.error or ''}".rstrip(": "))
    return final


@cli.command()
@click.argument("job")
@click.option("--traceback", "show_traceback", is_flag=True, help="Also print the stored traceback of a failed job.")
@click.option("--wide", is_flag=True, help="A group's table with every column.")
@click.option("--json", "as_json", is_flag=True, help="Print the job's row as JSON.")
def status(job: str, show_traceback: bool, wide: bool, as_json: bool) -> None:
    """Show a job (its id or a unique prefix of it), or a compare group's table."""
    from api_client.app.views import job_dict
    from api_client.cli import render

    client = _client()
    if (found_group := client.find_group(job)) is not None:
        _print_comparison(*found_group, as_json, wide)
        return
    found = client.status(job)
    published = client.publications(found.id)
    if as_json:
        _emit_json({**job_dict(found), "publications": [render.publication_dict(p) for p in published],
                    **({"error_traceback": found.error_traceback} if show_traceback else {})})
        return
    click.echo("\n".join(render.status_lines(found, published)))
    if show_traceback:
        click.echo(found.error_traceback.rstrip() if found.error_traceback else "(no traceback stored)")


@cli.command("list")
@click.option("--state", help="queued, running, succeeded, failed or cancelled.")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many jobs.")
@click.option("--mine", is_flag=True, help="Only jobs submitted by you.")
@click.option("--wide", is_flag=True, help="Every column (stage, priority, evaluation text, the model's whole path).")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs' rows as JSON.")
def list_(state: str | None, limit: int, mine: bool, wide: bool, as_json: bool) -> None:
    """List jobs, newest first."""
    from api_client.app.views import job_dict
    from api_client.cli import render

    client = _client()
    found = client.list(state=state, limit=limit, user=client.user if mine else None)
    if as_json:
        _emit_json([job_dict(j) for j in found])
        return
    rows = [render.LIST_HEADER_WIDE if wide else render.LIST_HEADER] + [render.list_row(j, wide) for j in found]
    for line in render.table_lines(rows, None if wide else render.NARROW):
        click.echo(line)


@cli.command()
@click.argument("job")
def watch(job: str) -> None:
    """Print a job's events as they happen, until it ends."""
    from api_client.app.views import aware

    client = _client()
    found = client.status(job)
    if found.estimates:
        from api_client.cli.render import estimated

        click.echo(f"estimated {estimated(found)}")
    final_state = None
    said: list[str | None] = [None]
    due = _every(5.0)

    def idle(now: Job) -> None:
        # While queued, why: once, and again when the reason changes.
        if now.state != "queued" or not due():
            return
        waiting = client.waiting(now.id)
        if waiting and waiting != said[0]:
            click.echo(f"({waiting})", err=True)
        said[0] = waiting

    with _left_running(client, found.id, f"qfarm watch {found.id}"):
        for ev in client.watch(job, on_idle=idle):
            stage = f" [{ev.stage}]" if ev.stage else ""
            msg = f" {ev.message}" if ev.message else ""
            click.echo(f"{aware(ev.at).strftime('%H:%M:%S')} {ev.state}{stage}{msg}")
            final_state = ev.state
    sys.exit(0 if final_state == "succeeded" else 1)


@cli.command()
@click.argument("job")
@click.option("--force", is_flag=True, help="Cancel another user's job (the event records who did).")
def cancel(job: str, force: bool) -> None:
    """Cancel a queued or running job (your own, or another's with --force)."""
    done = _client().cancel(job, force=force)
    if done.signalled:
        click.echo(f"{done.job.id} {done.job.state}")
    else:
        click.echo(f"{done.job.id} {done.job.state} in the database; its worker could not be signalled at once "
                   f"({done.reason}): it stops the job at its next heartbeat or stage")


@cli.command()
@click.argument("job")
def requeue(job: str) -> None:
    """Send a queued job's message again (the broker lost it), or hand a
    running job whose worker is dead to the next worker."""
    found = _client().requeue(job)
    click.echo(f"{found.id} {found.state} on {found.queue}")


@cli.command()
@click.option("--older-than", default="1d", show_default=True, help="Age of the newest object, e.g. 12h, 1d, 3600s.")
@click.option("--yes", is_flag=True, help="Delete them; without it, only list them (a dry run).")
def gc(older_than: str, yes: bool) -> None:
    """Remove artifact uploads that never got their manifest (cut short)."""
    from api_client.cli import render
    from api_client.contract.figures import size

    client = _client()
    found = client.gc(parse_age(older_than), delete=yes)
    for a in found:
        click.echo(f"{'deleted' if yes else 'would delete'} {client.settings.storage_url.rstrip('/')}/{a.prefix} "
                   f"({a.objects} objects, {size(a.bytes)}, last written {render.when(a.newest)})")
    total = sum(a.bytes for a in found)
    click.echo(f"{len(found)} incomplete artifacts, {size(total)}" + ("" if yes or not found else "; pass --yes to delete them"))


def parse_age(text: str) -> float:
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise QFarmError(f"--older-than takes a number with s, m, h or d (e.g. 1d), not {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


@cli.command("workers")
@click.option("--all", "show_all", is_flag=True, help="Also workers whose heartbeat stopped (lost) or that stopped.")
@click.option("--json", "as_json", is_flag=True, help="Print the workers' rows as JSON.")
def workers_(show_all: bool, as_json: bool) -> None:
    """Workers: host, GPU and its free memory, queues, current job and stage,
    jobs done, last heartbeat. A worker whose heartbeat is older than
    QFARM_HEARTBEAT_TIMEOUT is lost and drops off (shown with --all)."""
    from api_client.app.views import worker_dict
    from api_client.cli import render

    client = _client()
    found = client.workers(include_gone=show_all)
    stages = client.stages_of([w.current_job for w in found if w.current_job])
    timeout = client.settings.heartbeat_timeout_s
    if as_json:
        _emit_json([worker_dict(w, timeout, stages.get(w.current_job or "")) for w in found])
        return
    rows = [("NAME", "STATUS", "HOST", "GPU", "GPU MEMORY FREE", "QUEUES", "JOB", "STAGE", "DONE", "HEARTBEAT")] + \
        [render.worker_row(w, stages.get(w.current_job or ""), timeout) for w in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())


@cli.command()
@click.argument("job")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
def download(job: str, dest: Path) -> None:
    """Download a job's artifact into DEST, checking every file's sha256."""
    from api_client.contract.figures import size

    manifest = _client().download(job, dest, progress=lambda e: click.echo(f"  {e['path']} ({size(e['bytes'])}) ok", err=True))
    click.echo(f"{len(manifest['files'])} files verified in {dest}")


@cli.command()
@click.argument("job")
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--dry-run", is_flag=True, help="Check the artifact and print the files and the model card; send nothing.")
@click.option("--endpoint", help="The hub's URL (default: HF_ENDPOINT, else https://huggingface.co).")
@click.option("--members", type=click.Choice(["recommended", "all"]), default="recommended", show_default=True,
              help="A compare group: its recommended member to REPO, or every member to REPO-<method>.")
@click.option("--base-model", help="The hub id the model was quantized from, where the job read it elsewhere (a path, s3://).")
def publish(job: str, repo: str, private: bool, dry_run: bool, endpoint: str | None, members: str,
            base_model: str | None) -> None:
    """Publish JOB's artifact (or a compare GROUP's) to the hub repo REPO
    (OWNER/NAME) with a model card made from the job's figures. The token
    comes from QFARM_HF_TOKEN_FILE (a file) or HF_TOKEN."""
    import logging

    import huggingface_hub.hf_api  # noqa: F401 - sets its loggers' level when imported, so first
    from huggingface_hub.utils import disable_progress_bars

    from api_client.contract.figures import size

    # huggingface_hub's warnings ("No files have been modified…") and
    # progress bars say what the lines below say; the bars stay on a terminal.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        disable_progress_bars()
    done = _client().publish(job, repo, private=private, dry_run=dry_run, endpoint=endpoint, members=members,
                             base_model=base_model, progress=lambda line: click.echo(f"  {line}", err=True))
    for p in done:
        total = size(sum(f["bytes"] for f in p.files))
        if p.license_note:
            click.echo(f"  note: {p.license_note}", err=True)
        if dry_run:
            click.echo(f"would publish job {p.job_id} to {p.endpoint}/{p.repo}: {len(p.files)} files, {total}")
            for f in p.files:
                click.echo(f"  {f['path']} ({size(f['bytes'])})")
            click.echo(f"--- README.md ---\n{p.card.rstrip()}\n--- end of README.md ---")
        elif p.changed:
            click.echo(f"published job {p.job_id} to {p.url} at {p.revision} ({len(p.files)} files, {total})")
        else:
            click.echo(f"{p.url} already holds job {p.job_id}'s files and card at {p.revision}: nothing changed")


@cli.command()
@click.argument("name", required=False)
@click.option("--architectures", "show_architectures", is_flag=True,
              help="Print which method works on which architecture (the matrix tests/test_architectures.py proves).")
@click.option("--markdown", is_flag=True, help="With --architectures: as the Markdown table of docs/methods.md.")
def methods(name: str | None, show_architectures: bool, markdown: bool) -> None:
    """List the methods, their formats and their options (NAME: one method,
    with every model architecture it takes where it names them)."""
    from api_client.contract.catalog.options import cli_flags

    if show_architectures:
        _print_architectures(markdown)
        return
    for method in [name] if name else catalog.names():
        m = catalog.get(method)
        click.echo(f"{m.name}: {m.summary}")
        needs = f"; needs compute capability {m.min_capability[0]}.{m.min_capability[1]}+" if m.min_capability else ""
        click.echo(f"    formats: {', '.join(m.formats)}; calibration: {'yes' if m.calibrated else 'no'}{needs}")
        for f in m.options.knobs():
            choices = f.metadata.get("choices")
            allowed = f" ({'/'.join(map(str, choices))})" if choices else ""
            click.echo(f"    {cli_flags(f)}{allowed}, default {f.default}: {f.metadata.get('help', '')}")
        if m.architectures is not None:
            listed = ", ".join(sorted(m.architectures)) if name else f"qfarm methods {m.name} lists them"
            click.echo(f"    architectures ({len(m.architectures)}): {listed}")
    if name:
        return
    from api_client.contract import lm_eval_tasks

    click.echo(f"tasks (--tasks): {lm_eval_tasks.describe()}; any lm-eval registry task where the hub is reachable; "
               f"your own with --tasks-dir")


def _print_architectures(markdown: bool) -> None:
    from api_client.contract.catalog import architectures

    if markdown:
        click.echo(architectures.markdown())
        return
    rows = [("ARCHITECTURE", *architectures.METHOD_LABELS)] + [(name, *cells) for name, cells in architectures.matrix()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
    for line in architectures.reasons():
        click.echo(f"- {line}")
    click.echo("Other architectures are accepted; a job fails where less than 95 % of the decoder's linear and "
               "expert weights end up quantized.")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON: per variable its value, source and secrecy.")
def show_config(as_json: bool) -> None:
    """Show every QFARM_* setting in effect: its value (secrets masked) and
    whether it came from the environment or is the default."""
    entries = config.effective()
    if as_json:
        _emit_json({e.var.name: {"value": e.json_value(), "source": e.source, "secret": e.var.secret,
                                 "help": e.var.help} for e in entries})
        return
    rows = [("VARIABLE", "VALUE", "SOURCE")] + [(e.var.name, e.shown(), e.source) for e in entries]
    widths = [max(len(r[0]) for r in rows), min(60, max(len(r[1]) for r in rows))]
    for name, text, source in rows:
        click.echo(f"{name:<{widths[0]}}  {text:<{widths[1]}}  {source}")


QFarmGroup.lazy = {"worker": "worker.cli:worker"}


@cli.group()
def db() -> None:
    """The job database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema (Alembic)."""
    from api_client.app.client import upgrade_database

    where, head = upgrade_database()
    click.echo(f"database at {where} is at schema {head}")


def main() -> None:
    try:
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        shown = io.StringIO()
        exc.show(file=shown)
        click.echo(redact(shown.getvalue()), err=True, nl=False)
        sys.exit(exc.exit_code)
    except QFarmError as exc:
        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, the traceback on request
        if config.debug():
            raise
        click.echo(f"error: {type(exc).__name__}: {redact(printable(first_line(exc)))} (set QFARM_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
