"""The Python client: everything the CLI does, as calls.

    from api_client import Client, JobSpec
    job = Client().submit(JobSpec(model="/models/llama", method="gptq"))
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

from api_client import artifacts, queue, sources
from api_client.config import Settings
from api_client.db import Database, Job, JobEvent, JobState, jobs
from api_client.errors import QFarmError, ServiceUnavailable, SpecError
from api_client.spec import JobSpec, ResolvedSpec, resolve
from api_client.storage import open_store, sha256_file
from worker.routing import DEFAULT_QUEUE


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def job_row(r: ResolvedSpec, job_id: str, user: str, calib: dict | None = None, evals: dict | None = None) -> Job:
    """The queued row for a validated spec (calib/eval as rewritten by submit)."""
    return Job(
        id=job_id, state=JobState.QUEUED.value, method=r.method, format=r.format, params=r.params,
        model=r.model, calib=calib if calib is not None else (dict(vars(r.calib)) if r.calib else None),
        eval=evals if evals is not None else dict(vars(r.eval)), max_vram_bytes=r.max_vram_bytes,
        weights=r.weights, queue=r.queue, submitted_by=user, attempts=0, model_bytes=r.model_bytes,
    )


class Client:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._db: Database | None = None

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    # -- submitting --------------------------------------------------------
    def validate(self, spec: JobSpec) -> ResolvedSpec:
        return resolve(spec)

    def submit(self, spec: JobSpec) -> Job:
        """Validate, check every service, record the job and queue it.

        Raises before writing anything if the spec or a service is at fault;
        if queuing fails after the row was written, the row is removed.
        """
        r = resolve(spec)
        self.db.check()
        queue.check_broker(self.settings.broker_url)
        if r.queue != DEFAULT_QUEUE and r.queue not in queue.served_queues(self.settings.broker_url):
            major, minor = r.min_capability
            raise SpecError(f"no live worker can run --method {r.method}: it needs a GPU of compute capability "
                            f"{major}.{minor} or newer (Ada, Hopper), and no worker serving queue {r.queue} answered")
        job_id = new_job_id()
        store = None
        calib = dict(vars(r.calib)) if r.calib else None
        evals = dict(vars(r.eval))
        local_inputs = [(d, name) for d, name in ((calib, "calib"), (evals, "eval"))
                        if d is not None and sources.text_source_kind(d["source"]) == "local"]
        if local_inputs:
            store = open_store(self.settings.storage_url, self.settings.s3_endpoint_url)
            store.check()
            for d, name in local_inputs:
                d["source"] = self._upload_input(store, job_id, d["source"], name)
        job = job_row(r, job_id, self.settings.user, calib=calib, evals=evals)
        try:
            jobs.create(self.db, job, message=f"submitted by {self.settings.user}")
        except Exception:
            self._drop_inputs(store, job_id)
            raise
        try:
            queue.enqueue(self.settings.broker_url, job_id, r.queue)
        except Exception as exc:
            jobs.delete(self.db, job_id)
            self._drop_inputs(store, job_id)
            raise ServiceUnavailable(f"could not queue the job: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        return job

    @staticmethod
    def _upload_input(store, job_id: str, source: str, name: str) -> str:
        path = sources.check_local_text(source, "calibration" if name == "calib" else "evaluation")
        key = f"inputs/{job_id}/{name}{path.suffix.lower()}"
        store.put_file(path, key)
        store.verify(path, key, sha256_file(path))
        return store.uri(key)

    @staticmethod
    def _drop_inputs(store, job_id: str) -> None:
        if store is not None:
            store.delete_prefix(f"inputs/{job_id}/")

    # -- reading -----------------------------------------------------------
    def status(self, job_ref: str) -> Job:
        return jobs.get(self.db, job_ref)

    def list(self, state: str | None = None, limit: int = 50, user: str | None = None) -> list[Job]:
        if state is not None and state not in {s.value for s in JobState}:
            raise SpecError(f"unknown state {state!r} (choose from {', '.join(s.value for s in JobState)})")
        return jobs.list_jobs(self.db, state=state, limit=limit, user=user)

    def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        return jobs.events(self.db, job_id, after_id)

    def watch(self, job_ref: str, poll_s: float = 1.0, timeout_s: float | None = None) -> Iterator[JobEvent]:
        """Yield the job's events as they happen, until it ends."""
        job = self.status(job_ref)
        last, deadline = 0, None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            for ev in self.events(job.id, last):
                last = ev.id
                yield ev
            job = self.status(job.id)
            if JobState(job.state).terminal:
                for ev in self.events(job.id, last):
                    yield ev
                return
            if deadline is not None and time.monotonic() > deadline:
                raise QFarmError(f"job {job.id} still {job.state} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def wait(self, job_ref: str, on_event: Callable[[JobEvent], Any] | None = None,
             poll_s: float = 1.0, timeout_s: float | None = None) -> Job:
        for ev in self.watch(job_ref, poll_s, timeout_s):
            if on_event:
                on_event(ev)
        return self.status(job_ref)

    # -- acting on a job ---------------------------------------------------
    def cancel(self, job_ref: str) -> Job:
        job = self.status(job_ref)
        if JobState(job.state).terminal:
            raise QFarmError(f"job {job.id} already {job.state}")
        was = JobState(job.state)
        if not jobs.transition(self.db, job.id, expect=[JobState.QUEUED, JobState.RUNNING],
                               state=JobState.CANCELLED, message=f"cancelled by {self.settings.user}"):
            job = self.status(job.id)
            raise QFarmError(f"job {job.id} already {job.state}")
        # A queued job's worker will see the new state and drop it; a running
        # one is stopped now.
        try:
            queue.revoke(self.settings.broker_url, job.id, terminate=was == JobState.RUNNING)
        except Exception:  # noqa: BLE001 - the worker checks the state at every stage anyway
            pass
        return self.status(job.id)

    def download(self, job_ref: str, dest: Path, progress: Callable[[dict], Any] | None = None) -> dict:
        job = self.status(job_ref)
        if job.state != JobState.SUCCEEDED.value or not job.artifact_uri:
            raise QFarmError(f"job {job.id} is {job.state}: it has no artifact to download")
        return artifacts.download(job.artifact_uri, dest, self.settings.s3_endpoint_url, progress)
