"""One job, start to end, inside a worker process: claim it, fetch the model,
quantize, evaluate, upload, and record every step; on failure record why and
leave nothing behind."""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import os
import shutil
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from api_client.app import artifacts
from api_client.config import Settings
from api_client.contract import catalog, checkpoint
from api_client.contract.catalog import architectures
from api_client.contract.spec import CalibSpec, EvalSpec, defaults_for
from api_client.contract.states import Stage
from api_client.errors import JobNotFound, QFarmError, first_line, printable
from api_client.infra import lifecycle, liveness
from api_client.infra.db import Database, Job, JobState, jobs, workers
from api_client.infra.db.database import DatabaseGone, with_retry
from api_client.infra.db.models import utcnow
from api_client.infra.storage import open_store
from api_client.redaction import redact
from worker import coverage, evaluators, gpu, job_inputs, lm_eval_inputs, methods, model_cache, model_source, texts
from worker.context import JobContext
from worker.evaluators.task_accuracy import TaskRun
from worker.pulse import Pulse
from worker.versions import environment, library_versions, seed_everything

log = logging.getLogger("qfarm.worker")
RUNNING = (JobState.RUNNING,)


class Outcome(enum.Enum):
    """What the task does with its message once `execute` returns."""

    DONE = "done"  # acknowledge: the job's outcome is in the database
    GIVE_BACK = "give back"  # requeue the message: the database cannot record it now
    UNKNOWN = "unknown"  # retry later: the database does not know the job (yet)


class JobCancelled(Exception):
    """The job left the running state (cancelled by a user) while it ran."""


class Interrupted(BaseException):
    """SIGTERM reached the job process: a user's cancel (Celery revokes with
    terminate), the worker stopping (systemd sends SIGTERM to the whole
    group), or Celery cancelling the job after losing the broker. A
    BaseException, so library code that catches Exception does not swallow it."""


class Recorder:
    """The job's database, every call retried while the database is
    unreachable (QFARM_DB_RETRY_S), so an outage delays a job but never
    loses a state change."""

    def __init__(self, db: Database, retry_s: float):
        self.db, self.retry_s = db, retry_s

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return with_retry(lambda: fn(self.db, *args, **kwargs), self.retry_s, warn=log.warning)


T = TypeVar("T")


def claim(rec: Recorder, job_id: str, worker: str, device: gpu.Identity, settings: Settings) -> Job | None:
    """Move a job to running on this worker; None if it is not ours to run.

    A message can be doubled (a reconciler and a hand-back both send one) or
    redelivered (a job process died and Celery gave its message back), so
    the job's row decides: queued → ours; running on a live worker that is
    not us → someone else's, dropped; running on us (our earlier job process
    died) or on a dead worker → restarted as a new attempt.
    """
    job = rec(jobs.get, job_id)
    where = dict(worker=worker, gpu_index=device.index, gpu_name=device.name, started_at=utcnow())
    if job.state == JobState.QUEUED.value:
        message = f"started on {worker} ({device.name})"
    elif job.state == JobState.RUNNING.value:
        owner = rec(workers.get, job.worker)
        if job.worker != worker and liveness.lost_reason(job, owner, settings) is None:
            log.info("job %s already runs on %s; dropping this copy of its message", job_id, job.worker)
            return None
        if job.attempts >= settings.max_attempts:
            error = (f"worker lost: the worker running this job was lost {job.attempts} times (last: {job.worker}); "
                     f"it may need more memory than a worker has")
            rec(jobs.transition, job_id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.FAILED,
                message=error, error=error)
            return None
        message = f"restarted on {worker}: the worker running it ({job.worker}) was lost"
    else:
        log.info("job %s is %s; nothing to do", job_id, job.state)
        return None
    # The new attempt's upload starts by clearing the prefix (artifacts.Upload),
    # so a cleanup still pending from an earlier attempt is its own. It starts
    # with none of an earlier attempt's figures, and names its job process
    # (api_client/infra/liveness.py).
    ok = rec(jobs.transition, job_id, expect=[JobState(job.state)], expect_attempts=job.attempts,
             state=JobState.RUNNING, message=message, attempts=job.attempts + 1, cleanup_uri=None,
             **{**jobs.fresh_attempt(), **where, "process": liveness.process_key()})
    now = rec(jobs.get, job_id)
    # A commit can land although its connection dropped before saying so; the
    # row then shows our claim.
    if ok or (now.state == JobState.RUNNING.value and now.worker == worker and now.attempts == job.attempts + 1):
        return now
    return None


def execute(job_id: str, settings: Settings, worker: str, farm: str | None = None) -> Outcome:
    db = Database(settings.database_url)
    rec = Recorder(db, settings.db_retry_s)
    try:
        # A database at another schema (downgraded, or not yet upgraded to
        # this worker's code) cannot say whether the job's row is good: the
        # message goes back rather than be acknowledged unread.
        problem = db.schema_problem(rec(Database.revision))
        if problem:
            log.error("job %s: %s; giving its message back to the broker", job_id, problem)
            return Outcome.GIVE_BACK
        own_farm = rec(jobs.farm_id)
        if farm is not None and farm != own_farm:
            log.error("job %s belongs to farm %s, not this worker's farm %s (another database): handing its message "
                      "back; check QFARM_DATABASE_URL and QFARM_BROKER_URL of the workers on this broker",
                      job_id, farm, own_farm)
            return Outcome.GIVE_BACK
        try:
            rec(jobs.get, job_id)
        except JobNotFound:
            log.error("job %s is not in this farm's database (%s); its message goes back to wait for it",
                      job_id, db.display_url)
            return Outcome.UNKNOWN
        # Claimed before CUDA is set up (a third of a second): the GPU's
        # idle time between jobs ends with the claim.
        job = claim(rec, job_id, worker, gpu.identity(), settings)
        if job is None:
            return Outcome.DONE
        device = gpu.detect()
        scratch = settings.scratch_dir / "jobs"
        try:
            with Pulse(settings.database_url, job_id, job.attempts, settings.heartbeat_interval_s) as pulse, \
                    job_directory(scratch, job_id) as job_dir:
                # Libraries write files relative to the working directory (GPTQModel
                # its logs/): keep them inside the job's directory, which goes away.
                cwd = os.getcwd()
                os.chdir(job_dir)
                try:
                    Run(rec, settings, job, device, job_dir, own_farm, pulse).run()
                finally:
                    os.chdir(cwd)
        except (DatabaseGone, Interrupted):
            raise
        except Exception as exc:  # noqa: BLE001 - disk full, permissions: recorded as the job's failure
            # Run records its own failures; these are its setting up: the
            # working directory (disk full, permissions), the store.
            error = redact(printable(f"cannot start the job on this worker (scratch {scratch}): {first_line(exc)}"))
            rec(jobs.transition, job_id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.FAILED,
                message=error, error=error)
            log.error("job %s failed: %s", job_id, error)
        return Outcome.DONE
    except DatabaseGone as exc:
        log.error("job %s: %s; giving its message back to the broker", job_id, exc)
        return Outcome.GIVE_BACK
    except Interrupted:
        # Stopped before the job was ours to hand back: the message goes back.
        log.warning("job %s: stopped (SIGTERM) before it started; giving its message back", job_id)
        return Outcome.GIVE_BACK
    finally:
        db.dispose()


def process_lost(job_id: str, settings: Settings, worker: str, farm: str | None, reason: str,
                 memory: str | None = None) -> Outcome:
    """The job's process died without a word (a SIGKILL): a job it left
    running on this worker goes to the next one as a new attempt, with the
    reason as an event, as when a whole worker is lost. One stopped for its
    memory (`memory` says why) fails: the next attempt would need as much."""
    db = Database(settings.database_url)
    rec = Recorder(db, settings.db_retry_s)
    try:
        job = rec(jobs.get, job_id)
        if job.state == JobState.RUNNING.value and job.worker == worker and memory:
            error = f"out of memory: {memory}"
            rec(jobs.transition, job_id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.FAILED,
                message=error, error=error)
            log.error("job %s failed: %s", job_id, error)
        elif job.state == JobState.RUNNING.value and job.worker == worker:
            rec(lifecycle.hand_back, job, reason, settings, farm or rec(jobs.farm_id))
            log.warning("job %s: %s; handed back", job_id, reason)
        elif job.state == JobState.QUEUED.value:
            # It died before its claim: the job still needs this message.
            log.warning("job %s: %s before it claimed the job; giving its message back", job_id, reason)
            return Outcome.GIVE_BACK
        else:
            log.warning("job %s: %s (the job is %s)", job_id, reason, job.state)
        return Outcome.DONE
    except DatabaseGone as exc:
        # The message goes back; its next claim finds the job running here
        # and restarts it as a new attempt.
        log.error("job %s: %s, and %s; giving its message back to the broker", job_id, reason, exc)
        return Outcome.GIVE_BACK
    except JobNotFound:
        return Outcome.UNKNOWN
    finally:
        db.dispose()


def final_state(job_id: str, settings: Settings) -> str:
    db = Database(settings.database_url)
    try:
        return jobs.get(db, job_id).state
    except Exception as exc:  # noqa: BLE001 - only a log line depends on it
        return f"(state unknown: {first_line(exc)})"
    finally:
        db.dispose()


@contextmanager
def job_directory(scratch: Path, job_id: str) -> Iterator[Path]:
    """The job's working directory, removed afterwards, with what jobs that
    were killed left in `scratch`.

    A job holds a lock on `<id>.lock` beside its directory while it runs; the
    kernel drops it when the process dies. Clearing skips locked directories,
    so two workers that share a scratch directory by mistake (the same worker
    name twice on one host) do not delete each other's files.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / f"{job_id}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _clear(scratch)
        job_dir = scratch / job_id
        # Left by an earlier attempt of this job whose process was killed
        # (its lock, now ours, kept _clear off it).
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir()
        try:
            yield job_dir
        finally:
            _discard(job_dir)
            (scratch / f"{job_id}.lock").unlink(missing_ok=True)


def _discard(job_dir: Path) -> None:
    """Remove the job's directory without making the next job wait: the
    artifact and the evaluation's files are gigabytes, and deleting them
    took up to 4 s after a 7B job's end was recorded (bench/RESULTS.md §5).
    Renamed away at once, then deleted by a process of its own; a leftover
    (a worker killed meanwhile) goes with a later job's _clear."""
    trash = job_dir.with_name(f"{job_dir.name}.discarded-{os.getpid()}")
    try:
        os.rename(job_dir, trash)
        subprocess.Popen(["rm", "-rf", "--", str(trash)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError:
        shutil.rmtree(job_dir, ignore_errors=True)


def _clear(scratch: Path) -> None:
    """Remove what killed jobs left. Workers of one host share `scratch`: a
    lock file another worker has just created but not yet locked looks free,
    so lock files go only once a day old (a job's own is removed by it)."""
    for child in scratch.iterdir():
        name = child.name.removesuffix(".lock")
        if _locked(scratch / f"{name}.lock"):
            continue
        if ".discarded-" in name and time.time() - child.stat().st_mtime < 3600:
            continue  # being deleted (_discard)
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        elif time.time() - child.stat().st_mtime > 86400:
            child.unlink(missing_ok=True)


def _locked(lock_path: Path) -> bool:
    try:
        with open(lock_path, "rb") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False
    except FileNotFoundError:
        return False


class Run:
    def __init__(self, rec: Recorder, settings: Settings, job: Job, device: gpu.Device, job_dir: Path, farm: str,
                 pulse: Pulse):
        self.rec, self.settings, self.job, self.device, self.job_dir = rec, settings, job, device, job_dir
        self.farm = farm
        # Told before this process ends the job itself, so that it does not
        # take the new state for a reconciler's and stop the process.
        self.pulse = pulse
        self.store = open_store(settings.storage_url)
        self.upload: artifacts.Upload | None = None
        self.current_stage: str | None = None
        # What the job holds until it ends (its model's cache entry).
        self.held = ExitStack()

    # -- reporting ---------------------------------------------------------
    def stage(self, stage: Stage, message: str | None = None) -> None:
        if not self.rec(jobs.transition, self.job.id, expect=RUNNING, expect_attempts=self.job.attempts,
                        state=JobState.RUNNING, stage=stage.value, message=message):
            raise JobCancelled()
        self.current_stage = stage.value
        name = stage.value
        log.info("job %s: %s%s", self.job.id, name, f" ({printable(message)})" if message else "")

    def note(self, message: str) -> None:
        self.rec(jobs.note, self.job.id, message)

    def record(self, **figures: Any) -> None:
        """Store figures of this attempt; it leaves (JobCancelled) when the
        job is no longer this attempt's: cancelled, or taken over."""
        if not self.rec(jobs.record, self.job.id, attempt=self.job.attempts, **figures):
            raise JobCancelled()

    def fail(self, exc: BaseException) -> None:
        self.pulse.finishing()
        error = redact(printable(" ".join(failure_message(exc, self.device, self.job.max_vram_bytes).split())))[:2000]
        tail = redact("".join(traceback.format_exception(exc)[-30:]))[-8000:]
        self.rec(jobs.transition, self.job.id, expect=RUNNING, expect_attempts=self.job.attempts, state=JobState.FAILED,
                 message=error, error=error, error_traceback=tail)
        log.error("job %s failed: %s", self.job.id, error)

    # -- the job -----------------------------------------------------------
    def run(self) -> None:
        with self.held:
            self._run_and_record()

    def _run_and_record(self) -> None:
        try:
            self._run()
        except JobCancelled:
            # Cancelled, or taken over by another worker (its heartbeat was
            # thought lost): the store's prefix is only ours to clear if the
            # job's current attempt is this one.
            if self._attempt_is_mine():
                self._unpublish()
            log.info("job %s left this worker (%s)", self.job.id, self.rec(jobs.get, self.job.id).state)
        except Interrupted:
            if self._attempt_is_mine():
                self._unpublish()
            self._stopped()
        except DatabaseGone:
            # The message goes back to the broker (execute); the next attempt
            # starts clean.
            self._unpublish()
            raise
        except BaseException as exc:
            self._unpublish()
            if _is_time_limit(exc):
                exc = QFarmError(f"the job ran past the time limit of {self.settings.job_time_limit_s} s (QFARM_JOB_TIME_LIMIT)")
            self.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _stopped(self) -> None:
        """SIGTERM: a cancel, or the worker going away. A cancelled job stays
        cancelled; any other is handed to the next worker (a restart is not
        a failure)."""
        job = self.rec(jobs.get, self.job.id)
        if job.state != JobState.RUNNING.value or not self._attempt_is_mine(job):
            log.info("job %s was %s (attempt %d on %s)", self.job.id, job.state, job.attempts, job.worker)
            return
        during = f" while {self.current_stage}" if self.current_stage else ""
        reason = f"the worker {self.job.worker} was stopped (SIGTERM){during}"
        self.pulse.finishing()
        self.rec(lifecycle.hand_back, job, reason, self.settings, self.farm)
        log.warning("job %s: %s; handed back", self.job.id, reason)

    def _attempt_is_mine(self, job: Job | None = None) -> bool:
        """Whether the job's current attempt is this process's, and not
        finished with success (then nothing of it may be removed)."""
        job = job or self.rec(jobs.get, self.job.id)
        return (job.worker == self.job.worker and job.attempts == self.job.attempts
                and job.state != JobState.SUCCEEDED.value)

    def _run(self) -> None:
        job, device = self.job, self.device
        method_cls = catalog.get(job.method)
        params = method_cls.parse_params(job.params, job.format)
        gpu.limit_memory(device, job.max_vram_bytes)
        wall_start = time.perf_counter()

        if job.allow_remote_code and not self.settings.allow_remote_code:
            raise QFarmError("this job runs the model's own code, and this worker was not started with "
                             "--allow-remote-code")
        # Before anything is read: what the job names may not make this
        # worker read what its submitter could not (worker/job_inputs.py).
        job_inputs.check(job, self.store)
        self.stage(Stage.LOADING, f"fetching {job.model}")
        fetched = model_source.fetch(job.model, self.job_dir, remote_code=job.allow_remote_code, stack=self.held,
                                     cache=model_cache.ModelCache(self.settings.model_cache_dir, self.settings.model_cache_bytes))
        model_dir, info = fetched.path, fetched.info
        if fetched.cache in ("hit", "miss"):
            self.note(f"model cache {fetched.cache}: {job.model} ({info.weight_bytes / 2**20:.1f} MiB of weights) "
                      f"{'was on this host' if fetched.cache == 'hit' else 'fetched'} in {fetched.seconds:.1f} s")
        checkpoint.check_quantizable(info, method_cls.group_size(params))
        # A hub or s3:// model's config is first read here: refused as submit refuses a local one.
        architectures.check(info.config, job.method, job.format)
        self.record(model_bytes=info.weight_bytes)

        # The tasks are made ready (or refused) before any GPU time is spent.
        eval_spec = EvalSpec(**(job.eval or {}))
        tasks = lm_eval_inputs.prepare(eval_spec, self.job_dir / "tasks", job.allow_remote_code and self.settings.allow_remote_code)
        output_dir = self.job_dir / "artifact"
        output_dir.mkdir()
        ctx = JobContext(
            job_id=job.id, model_dir=model_dir, output_dir=output_dir, scratch_dir=self.job_dir, device=device,
            calib=_calib(job, device), max_vram_bytes=job.max_vram_bytes, weights=job.weights,
            model_bytes=info.weight_bytes, trust_remote_code=job.allow_remote_code, model_config=info.config,
            on_stage=self.stage, on_note=self.note,
        )
        seed_everything()
        with gpu.PeakMemory(device) as peak:
            methods.quantize(job.method, ctx, params, job.format)
        artifact_bytes = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
        # What the artifact holds quantized, from its tensors: a method that
        # left the decoder in full precision fails here, before any upload.
        reached, problem = _coverage(job, ctx, output_dir, model_dir)
        self.record(peak_vram_bytes=peak.torch_peak, peak_vram_nvml_bytes=peak.nvml_peak,
                    quantize_seconds=ctx.library_seconds, artifact_bytes=artifact_bytes, peak_rss_bytes=gpu.peak_rss(),
                    quantized_fraction=reached)
        if problem:
            raise QFarmError(problem)

        # The artifact is final: upload it while the evaluation runs.
        self.upload = artifacts.Upload(self.store, job.id, output_dir)
        self.stage(Stage.EVALUATING, f"uploading the artifact ({artifact_bytes / 2**20:.1f} MiB) to {self.store.url} meanwhile")
        figures = self._evaluate(eval_spec, tasks, model_dir, ctx.targets or {job.format: output_dir}, info.weight_bytes,
                                 info.context)
        self.record(**figures["columns"], eval_peak_rss_bytes=gpu.peak_rss())
        columns, extra = figures["columns"], figures["extra"]
        if "ppl_ratio" in columns:
            self.note(f"perplexity {columns['ppl_baseline']:.4g} → {columns['ppl_quantized']:.4g} (×{columns['ppl_ratio']:.4f})")
        else:  # a GGUF file no runtime on this worker loads (gguf_runtime.NoRuntime)
            self.note(f"perplexity not measured: {extra.get('perplexity_error')}")

        self.stage(Stage.UPLOADING, "finishing the upload, then the manifest")
        metrics = {
            **figures["columns"], **figures["extra"], **ctx.facts,
            "model_cache": fetched.cache, "model_fetch_seconds": fetched.seconds,
            "model_bytes": info.weight_bytes, "artifact_bytes": artifact_bytes,
            "peak_vram_bytes": peak.torch_peak, "peak_vram_nvml_bytes": peak.nvml_peak,
            "quantize_seconds": ctx.library_seconds,
            "wall_seconds_before_upload": time.perf_counter() - wall_start,
        }
        versions = library_versions()
        metrics["environment"] = environment(device)
        self.record(metrics=metrics, library_versions=versions)
        uri = self.upload.finish(self._manifest(metrics, versions))
        metrics["wall_seconds"] = time.perf_counter() - wall_start
        # One digest of every file's: equal for two runs that wrote the same artifact.
        metrics["artifact_sha256"] = self.upload.checksum
        self.pulse.finishing()
        # A False with the job succeeded: a commit whose acknowledgement was
        # lost with its connection.
        if not self.rec(jobs.transition, job.id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.SUCCEEDED,
                        stage=None, message=f"artifact at {uri}", artifact_uri=uri, metrics=metrics) \
                and self.rec(jobs.get, job.id).state != JobState.SUCCEEDED.value:
            raise JobCancelled()

    def _evaluate(self, spec: EvalSpec, tasks: TaskRun | None, model_dir: Path, targets: dict[str, Path], model_bytes: int,
                  context: int | None) -> dict:
        """The job's figures: the first target's as its columns; where the
        artifact holds several models (a GGUF job's formats), each one's
        figures under metrics["formats"], by label."""
        from transformers import AutoTokenizer

        defaults = defaults_for(self.device.is_cuda)
        if spec.seqlen and context and spec.seqlen > context:
            raise QFarmError(f"--eval-seqlen {spec.seqlen} is longer than the model's context of {context} tokens")
        seqlen = spec.seqlen or min(defaults.eval_seqlen, context or defaults.eval_seqlen)
        code = self.job.allow_remote_code
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=code)
        text = texts.load_text(spec.source, "eval")
        windows = texts.token_windows(tokenizer, text, seqlen, spec.windows or defaults.eval_windows)
        if not windows:
            raise QFarmError(f"evaluation text {spec.source} is shorter than one window of {seqlen} tokens")
        inputs = evaluators.Inputs(
            device=self.device, tokenizer=tokenizer, windows=windows, max_vram_bytes=self.job.max_vram_bytes,
            decode_tokens=spec.decode_tokens, scratch=self.job_dir / "eval", dense_bytes=model_bytes,
            trust_remote_code=code, tasks=tasks,
            full_baseline=spec.baseline == "full",
        )
        measured = evaluators.run_targets(inputs, model_dir, targets)
        figures = next(iter(measured.values()))
        figures.metrics.update(eval_seqlen=seqlen, eval_windows=len(windows),
                               eval_dtype="auto" if self.device.is_cuda else "float32")
        if len(targets) > 1 or next(iter(targets.values())).is_file():
            figures.metrics["formats"] = {label: {**f.columns, **{k: v for k, v in f.metrics.items() if k != "eval_passes"}}
                                          for label, f in measured.items()}
        return {"columns": figures.columns, "extra": figures.metrics}

    def _manifest(self, metrics: dict, versions: dict) -> dict:
        """Everything but the files, which the upload adds as it verifies them."""
        job = self.job
        return {
            "qfarm_manifest": artifacts.MANIFEST_VERSION,
            "job": {
                "id": job.id, "method": job.method, "format": job.format, "params": job.params,
                "model": redact(job.model), "calib": job.calib, "eval": job.eval, "weights": job.weights,
                "max_vram_bytes": job.max_vram_bytes, "submitted_by": job.submitted_by,
                "created_at": jobs.aware(job.created_at).isoformat(), "worker": job.worker, "gpu_name": self.device.name,
            },
            "library_versions": versions,
            "environment": metrics.get("environment"),
            "metrics": metrics,
            "created_at": utcnow().isoformat(),
        }

    def _unpublish(self) -> None:
        """Remove the partial upload; where the store cannot be reached, the
        job records it and every worker's reconciler retries."""
        if self.upload is None:
            return
        for delay in (0, 1, 3):
            time.sleep(delay)
            try:
                self.upload.abort()
                return
            except Exception as exc:  # noqa: BLE001 - the original failure matters more
                reason = first_line(exc)
        uri = self.store.uri(artifacts.artifact_prefix(self.job.id))
        log.warning("job %s: could not remove the partial upload %s (%s); the reconciler will", self.job.id, uri, reason)
        try:
            self.rec(jobs.record, self.job.id, cleanup_uri=uri)
            self.note(f"partial upload {uri} could not be removed now ({reason}); it will be")
        except Exception:
            log.exception("job %s: could not record the pending cleanup", self.job.id)


def _coverage(job: Job, ctx: JobContext, output_dir: Path, model_dir: Path) -> tuple[float, str | None]:
    """What the artifact stores quantized, from its tensors (worker/coverage.py),
    and the one line failing a job that left the decoder in full precision
    (None: it did not). A GGUF job's files are measured one by one (its
    headline is the first format's); `f16` asks for no quantization."""
    if not ctx.targets:
        reached = coverage.measure(output_dir, model_dir)
        ctx.facts.update(reached.as_metrics())
        return reached.fraction, reached.problem(catalog.label_of(job.method, job.format))
    fractions, problems = {}, []
    for fmt, path in ctx.targets.items():
        reached = coverage.measure_gguf(path)
        fractions[fmt] = reached.fraction
        problems.append(None if fmt == "f16" else reached.problem(f"{job.method}:{fmt}"))
    ctx.facts["quantized_fraction_by_format"] = fractions
    ctx.facts["quantized_fraction"] = next(iter(fractions.values()))
    return ctx.facts["quantized_fraction"], next((p for p in problems if p), None)


def _calib(job: Job, device: gpu.Device) -> CalibSpec | None:
    return CalibSpec(**job.calib).resolved(defaults_for(device.is_cuda)) if job.calib else None


def failure_message(exc: BaseException, device: gpu.Device, max_vram_bytes: int | None) -> str:
    """A failed job's error: the library's words, led by what they mean on
    a worker where that is known."""
    if isinstance(exc, QFarmError):
        return str(exc)
    error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    if gpu.is_oom(exc):
        cap = f" under --max-vram {max_vram_bytes / 2**30:.1f} GiB" if max_vram_bytes else ""
        return f"out of GPU memory{cap} ({device.name}): {error}"
    if (full := _disk_full(exc)) is not None:
        # Not SQLAlchemy's wrapping of it: that adds the statement, its
        # parameters and a help link, and reads as a database fault.
        return f"the worker's disk is full: {type(full).__name__}: {first_line(full)}"
    return error


def _disk_full(exc: BaseException | None) -> BaseException | None:
    """The error in `exc`'s chain that says a disk is full: ENOSPC from a
    write, or SQLite's SQLITE_FULL ("database or disk is full"), which a
    farm on one machine meets first when the disk holding its database and
    its artifacts fills (bench/RESULTS.md §7: the job said only that)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return exc
        orig = getattr(exc, "orig", None)  # SQLAlchemy's DBAPIError holds the driver's
        if "database or disk is full" in str(orig if orig is not None else exc):
            return orig if orig is not None else exc
        exc = exc.__cause__ or exc.__context__
    return None


def _is_time_limit(exc: BaseException) -> bool:
    return type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded")
