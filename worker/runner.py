"""One job, start to end, inside a worker process: claim it, fetch the model,
quantize, evaluate, upload, and record every step; on failure record why and
leave nothing behind."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from api_client import artifacts, checkpoint
from api_client.config import Settings, redact
from api_client.db import Database, Job, JobState
from api_client.db import jobs
from api_client.db.models import utcnow
from api_client.errors import QFarmError
from api_client.storage import open_store
from worker import evaluation, gpu, methods, model_source, texts
from worker.context import JobContext
from worker.versions import library_versions

log = logging.getLogger("qfarm.worker")
RUNNING = (JobState.RUNNING,)


class JobCancelled(Exception):
    """The job left the running state (cancelled by a user) while it ran."""


class Interrupted(BaseException):
    """SIGTERM reached the job process: a user's cancel (Celery revokes with
    terminate) or the machine shutting down. A BaseException, so library code
    that catches Exception does not swallow it."""


def claim(db: Database, job_id: str, worker: str, device: gpu.Device, max_attempts: int) -> Job | None:
    """Move a job to running on this worker; None if it is not ours to run."""
    try:
        job = jobs.get(db, job_id)
    except QFarmError:
        log.warning("job %s is not in the database; dropping its message", job_id)
        return None
    where = dict(worker=worker, gpu_index=device.index, gpu_name=device.name, started_at=utcnow())
    if job.state == JobState.QUEUED.value:
        ok = jobs.transition(db, job_id, expect=[JobState.QUEUED], state=JobState.RUNNING,
                             message=f"started on {worker} ({device.name})", attempts=job.attempts + 1, **where)
    elif job.state == JobState.RUNNING.value:
        # The broker handed the message back: the worker running it died.
        if job.attempts >= max_attempts:
            jobs.transition(
                db, job_id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.FAILED,
                message="given up: its worker was lost on every attempt",
                error=f"the worker running this job was lost {job.attempts} times (last: {job.worker}); "
                      f"it may need more memory than a worker has",
            )
            return None
        ok = jobs.transition(db, job_id, expect=RUNNING, expect_attempts=job.attempts, state=JobState.RUNNING,
                             message=f"restarted on {worker}: the worker running it ({job.worker}) was lost",
                             attempts=job.attempts + 1, **where)
    else:
        log.info("job %s is %s; nothing to do", job_id, job.state)
        return None
    return jobs.get(db, job_id) if ok else None


def execute(job_id: str, settings: Settings, worker: str) -> None:
    db = Database(settings.database_url)
    try:
        device = gpu.detect()
        job = claim(db, job_id, worker, device, settings.max_attempts)
        if job is None:
            return
        scratch = settings.scratch_dir / "".join(c if c.isalnum() or c in "-_.@" else "_" for c in worker)
        try:
            with job_directory(scratch, job_id) as job_dir:
                # Libraries write files relative to the working directory (GPTQModel
                # its logs/): keep them inside the job's directory, which goes away.
                cwd = os.getcwd()
                os.chdir(job_dir)
                try:
                    Run(db, settings, job, device, job_dir).run()
                finally:
                    os.chdir(cwd)
        except Exception as exc:
            # Run records its own failures; this is the directory's (disk full, permissions).
            error = redact(f"cannot prepare the job's working directory under {scratch}: {exc}")
            jobs.transition(db, job_id, expect=RUNNING, state=JobState.FAILED, message=error, error=error)
            log.error("job %s failed: %s", job_id, error)
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
            shutil.rmtree(job_dir, ignore_errors=True)
            (scratch / f"{job_id}.lock").unlink(missing_ok=True)


def _clear(scratch: Path) -> None:
    for child in scratch.iterdir():
        name = child.name.removesuffix(".lock")
        if _locked(scratch / f"{name}.lock"):
            continue
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


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
    def __init__(self, db: Database, settings: Settings, job: Job, device: gpu.Device, job_dir: Path):
        self.db, self.settings, self.job, self.device, self.job_dir = db, settings, job, device, job_dir
        self.store = open_store(settings.storage_url, settings.s3_endpoint_url)
        self.upload: artifacts.Upload | None = None

    # -- reporting ---------------------------------------------------------
    def stage(self, name: str, message: str | None = None) -> None:
        if not jobs.transition(self.db, self.job.id, expect=RUNNING, state=JobState.RUNNING, stage=name, message=message):
            raise JobCancelled()
        log.info("job %s: %s%s", self.job.id, name, f" ({message})" if message else "")

    def note(self, message: str) -> None:
        jobs.note(self.db, self.job.id, message)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, QFarmError):
            error = str(exc)
        else:
            error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
            if _is_oom(exc):
                cap = f" under --max-vram {self.job.max_vram_bytes / 2**30:.1f} GiB" if self.job.max_vram_bytes else ""
                error = f"out of GPU memory{cap} ({self.device.name}): {error}"
        error = redact(" ".join(error.split()))[:2000]
        tail = redact("".join(traceback.format_exception(exc)[-30:]))[-8000:]
        jobs.transition(self.db, self.job.id, expect=RUNNING, state=JobState.FAILED, message=error,
                        error=error, error_traceback=tail)
        log.error("job %s failed: %s", self.job.id, error)

    # -- the job -----------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except (JobCancelled, Interrupted) as exc:
            self._unpublish()
            if isinstance(exc, Interrupted) and jobs.get(self.db, self.job.id).state == JobState.RUNNING.value:
                self.fail(QFarmError("the worker process was stopped (SIGTERM) while running this job"))
            else:
                log.info("job %s was cancelled", self.job.id)
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded
            self._unpublish()
            if _is_time_limit(exc):
                exc = QFarmError(f"the job ran past the time limit of {self.settings.job_time_limit_s} s (QFARM_JOB_TIME_LIMIT)")
            self.fail(exc)
            if not isinstance(exc, Exception):
                raise

    def _run(self) -> None:
        job, device = self.job, self.device
        method_cls = methods.get(job.method)
        params = method_cls.parse_params(job.params, job.format)
        gpu.limit_memory(device, job.max_vram_bytes)
        wall_start = time.perf_counter()

        self.stage("loading", f"fetching {job.model}")
        model_dir = model_source.fetch(job.model, self.job_dir / "model", self.settings.s3_endpoint_url)
        info = checkpoint.inspect(model_dir)
        checkpoint.check_quantizable(info, method_cls.group_size(params))
        jobs.record(self.db, job.id, model_bytes=info.weight_bytes)

        output_dir = self.job_dir / "artifact"
        output_dir.mkdir()
        ctx = JobContext(
            job_id=job.id, model_dir=model_dir, output_dir=output_dir, scratch_dir=self.job_dir, device=device,
            calib=_calib(job), max_vram_bytes=job.max_vram_bytes, weights=job.weights,
            model_bytes=info.weight_bytes, s3_endpoint_url=self.settings.s3_endpoint_url,
            on_stage=self.stage, on_note=self.note,
        )
        with gpu.PeakMemory(device) as peak:
            method_cls().quantize(ctx, params, job.format)
        artifact_bytes = sum(p.stat().st_size for p in output_dir.rglob("*") if p.is_file())
        jobs.record(self.db, job.id, peak_vram_bytes=peak.torch_peak, peak_vram_nvml_bytes=peak.nvml_peak,
                    quantize_seconds=ctx.library_seconds, artifact_bytes=artifact_bytes)

        # The artifact is final: upload it while the evaluation runs.
        self.upload = artifacts.Upload(self.store, job.id, output_dir)
        self.stage("evaluating", f"uploading the artifact ({artifact_bytes / 2**20:.1f} MiB) to {self.store.url} meanwhile")
        figures = self._evaluate(model_dir, output_dir, info.weight_bytes)
        jobs.record(self.db, job.id, **figures["columns"])
        self.note(f"perplexity {figures['columns']['ppl_baseline']:.4g} → {figures['columns']['ppl_quantized']:.4g} "
                  f"(×{figures['columns']['ppl_ratio']:.4f})")

        self.stage("uploading", "finishing the upload, then the manifest")
        metrics = {
            **figures["columns"], **figures["extra"], **ctx.facts,
            "model_bytes": info.weight_bytes, "artifact_bytes": artifact_bytes,
            "peak_vram_bytes": peak.torch_peak, "peak_vram_nvml_bytes": peak.nvml_peak,
            "quantize_seconds": ctx.library_seconds,
            "wall_seconds_before_upload": time.perf_counter() - wall_start,
        }
        versions = library_versions()
        jobs.record(self.db, job.id, metrics=metrics, library_versions=versions)
        uri = self.upload.finish(self._manifest(metrics, versions))
        metrics["wall_seconds"] = time.perf_counter() - wall_start
        if not jobs.transition(self.db, job.id, expect=RUNNING, state=JobState.SUCCEEDED, stage=None,
                               message=f"artifact at {uri}", artifact_uri=uri, metrics=metrics):
            raise JobCancelled()

    def _evaluate(self, model_dir: Path, output_dir: Path, model_bytes: int) -> dict:
        from transformers import AutoTokenizer

        spec = self.job.eval or {}
        seqlen = spec.get("seqlen") or evaluation.default_seqlen(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        text = texts.load_text(spec.get("source", "builtin"), "eval", self.settings.s3_endpoint_url)
        windows = texts.token_windows(tokenizer, text, seqlen, spec.get("windows"))
        if not windows:
            raise QFarmError(f"evaluation text {spec.get('source')} is shorter than one window of {seqlen} tokens")
        decode = spec.get("decode_tokens", 64)
        base = evaluation.evaluate(model_dir, windows, self.device, self.job.max_vram_bytes, decode)
        quant = evaluation.evaluate(output_dir, windows, self.device, self.job.max_vram_bytes, decode,
                                    dense_bytes=model_bytes)
        return {
            "columns": dict(
                ppl_baseline=base.perplexity, ppl_quantized=quant.perplexity, ppl_ratio=quant.perplexity / base.perplexity,
                eval_peak_vram_bytes=quant.peak_vram_bytes, eval_seconds=base.seconds + quant.seconds,
                tokens_per_s_baseline=base.tokens_per_s, tokens_per_s_quantized=quant.tokens_per_s,
            ),
            "extra": dict(
                eval_seqlen=seqlen, eval_windows=len(windows), eval_tokens=quant.tokens,
                eval_peak_vram_baseline_bytes=base.peak_vram_bytes,
                eval_peak_vram_nvml_bytes=quant.peak_vram_nvml_bytes,
                eval_dtype="auto" if self.device.is_cuda else "float32",
            ),
        }

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
            "metrics": metrics,
            "created_at": utcnow().isoformat(),
        }

    def _unpublish(self) -> None:
        if self.upload is not None:
            try:
                self.upload.abort()
            except Exception:  # noqa: BLE001 - the original failure matters more
                log.exception("could not remove the partial upload of job %s", self.job.id)


def _calib(job: Job):
    from api_client.spec import CalibSpec

    return CalibSpec(**job.calib) if job.calib else None


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc)


def _is_time_limit(exc: BaseException) -> bool:
    return type(exc).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded")
