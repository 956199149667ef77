"""The Python client: everything the CLI does, as calls.

    from api_client import Client, JobSpec
    job = Client().submit(JobSpec(model="/models/llama", method="gptq"))
"""

from __future__ import annotations

import builtins
import dataclasses
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_client.app import artifacts, estimate
from api_client.config import Settings
from api_client.contract import catalog, inputs, routing, sources
from api_client.contract.spec import CalibSpec, JobSpec, ResolvedSpec, resolve
from api_client.errors import QFarmError, ServiceUnavailable, SpecError, first_line
from api_client.infra import lifecycle, liveness, queue
from api_client.infra.db import Database, Job, JobEvent, JobState, groups, jobs, publications, roles, workers
from api_client.infra.db.models import JobGroup, Publication, Worker
from api_client.infra.storage import Store, open_object, open_store, sha256_file
from api_client.sizes import parse_size


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def job_row(r: ResolvedSpec, job_id: str, user: str, queue_name: str, calib: dict | None = None,
            evals: dict | None = None) -> Job:
    """The queued row for a validated spec (calib/eval as rewritten by submit)."""
    return Job(
        id=job_id, state=JobState.QUEUED.value, method=r.method, format=r.format, params=r.params,
        model=r.model, calib=calib if calib is not None else (dict(vars(r.calib)) if r.calib else None),
        eval=evals if evals is not None else dict(vars(r.eval)), max_vram_bytes=r.max_vram_bytes,
        weights=r.weights, queue=queue_name, submitted_by=user, attempts=0, model_bytes=r.model_bytes,
        allow_remote_code=r.allow_remote_code, priority=r.priority,
    )


def _dereferenced(root: Path) -> Callable[[tarfile.TarInfo], tarfile.TarInfo | None]:
    """A tar filter that stores a symlink (checked to stay inside `root`) as
    the regular file it names, so the worker's safe extraction keeps it."""
    def swap(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if not info.issym():
            return info
        target = (root / info.name).resolve()
        if not target.is_file():
            return None
        real = tarfile.TarInfo(info.name)
        real.size, real.mode, real.mtime = target.stat().st_size, 0o644, int(target.stat().st_mtime)
        real.type = tarfile.REGTYPE
        return real
    return swap


@dataclass(frozen=True)
class _Planned:
    """Where a validated job goes and how long it should take there."""

    queue: str
    estimates: builtins.list[dict] | None

    @property
    def seconds(self) -> float:
        return max((e.get("seconds") or 0 for e in self.estimates or []), default=0.0)


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did: the job, and whether its worker was signalled now
    (False: the broker could not be reached; the worker sees the cancelled
    state at its next heartbeat or stage and stops then)."""

    job: Job
    signalled: bool
    reason: str | None = None



class Client:
    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings.from_env()
        self._db: Database | None = None
        self._user: str | None = None

    @property
    def db(self) -> Database:
        """The job database, checked once (reachable, migrated) so every
        command fails with one line, not a driver's traceback."""
        if self._db is None:
            db = Database(self.settings.database_url)
            try:
                db.check()
            except BaseException:
                db.dispose()
                raise
            self._db = db
        return self._db

    @property
    def user(self) -> str:
        """Who this client is, as jobs and events record it: the database
        role on PostgreSQL (QFARM_USER is not asked), QFARM_USER on SQLite
        (api_client/infra/db/roles.py)."""
        if self._user is None:
            self._user = roles.current_user(self.db) or self.settings.user
        return self._user

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()

    def farm(self) -> str:
        return jobs.farm_id(self.db)

    # -- submitting --------------------------------------------------------
    def validate(self, spec: JobSpec) -> ResolvedSpec:
        return resolve(spec)

    def submit(self, spec: JobSpec) -> Job:
        """Validate, check every service, record the job and queue it.

        Raises before writing anything if the spec or a service is at fault;
        if queuing fails after the row was written, the row is removed.
        """
        r = resolve(spec)
        farm = self.farm()
        queue.check_broker(self.settings.broker_url)
        planned = self._plan(r, farm)
        job_id = new_job_id()
        store, calib, evals = self._upload_inputs(job_id, r)
        job = job_row(r, job_id, self.user, planned.queue, calib=calib, evals=evals)
        job.estimates = planned.estimates
        try:
            jobs.create(self.db, job, message=f"submitted by {self.user}")
        except Exception:
            self._drop_inputs(store, job_id)
            raise
        try:
            queue.enqueue(self.settings.broker_url, job_id, planned.queue, farm, job.priority)
        except Exception as exc:  # noqa: BLE001 - the row goes, whatever the broker said
            jobs.delete(self.db, job_id)
            self._drop_inputs(store, job_id)
            raise ServiceUnavailable(f"could not queue the job: {first_line(exc)}") from None
        return job

    def compare(self, model: str, methods: builtins.list[str], base: JobSpec, max_size: int | str | None = None,
                max_vram: int | str | None = None) -> tuple[JobGroup, builtins.list[Job]]:
        """Submit one job per method of `methods` (each `name` or
        `name:format`) on `model` as a group, slowest first so the group
        ends sooner on a farm of several GPUs. Every member is validated
        before anything is written; the group and its rows are written at
        once; if queuing fails, none stays."""
        if not methods:
            raise SpecError("--methods names no method: give e.g. --methods gptq,awq,nf4")
        if len(set(methods)) != len(methods):
            raise SpecError(f"--methods names a method twice: {','.join(methods)}")
        limits = {"max_size_bytes": parse_size(max_size), "max_vram_bytes": parse_size(max_vram)}
        # The members share the model, the texts and the task directory:
        # found once, not once a member.
        shared = dataclasses.replace(base.eval)
        shared.validate()
        found = inputs.resolve(model, (base.calib or CalibSpec()).source, shared.source, shared.tasks_dir,
                               shared.tasks, base.allow_remote_code)
        resolved = []
        for entry in methods:
            name, _, fmt = entry.partition(":")
            try:
                method = catalog.get(name)
                checked = method.parse_format(fmt or None)
                calibrated = method.needs_calibration(method.parse_params(base.params, checked), checked)
                member = dataclasses.replace(base, model=model, method=name, format=checked,
                                             calib=base.calib if calibrated else None, eval=dataclasses.replace(base.eval))
                resolved.append(resolve(member, found))
            except SpecError as exc:
                raise SpecError(f"{entry}: {exc}") from None
        farm = self.farm()
        queue.check_broker(self.settings.broker_url)
        plans = [self._plan(r, farm) for r in resolved]
        # Longest first: with N GPUs free, the last to start is a short one.
        order = sorted(range(len(plans)), key=lambda i: -plans[i].seconds)
        group = JobGroup(id=groups.PREFIX + uuid.uuid4().hex[:11], kind="compare", model=resolved[0].model,
                         methods=methods, limits=limits, submitted_by=self.user)
        # The calibration text comes from a calibrated member (the first
        # method named may take none); evaluation inputs are every member's.
        store, calib, evals = self._upload_inputs(group.id, next((r for r in resolved if r.calib), resolved[0]))
        rows = []
        for n, i in enumerate(order):
            r = resolved[i]
            # The original model's full figures (serving, tasks) are measured
            # once, by the quickest member: the least likely to fail (it has
            # the least to do), so the group's baseline rarely goes missing.
            member_eval = dict(evals, baseline="full" if n == len(order) - 1 else "perplexity")
            row = job_row(r, new_job_id(), self.user, plans[i].queue,
                          calib=calib if r.calib else None, evals=member_eval)
            row.estimates = plans[i].estimates
            rows.append(row)
        try:
            groups.create(self.db, group, rows, message=f"submitted by {self.user} (compare group {group.id})")
        except Exception:
            self._drop_inputs(store, group.id)
            raise
        sent = 0
        try:
            for row in rows:
                queue.enqueue(self.settings.broker_url, row.id, row.queue, farm, row.priority)
                sent += 1
        except Exception as exc:  # noqa: BLE001 - said in one line, and no member is left waiting
            reason = f"could not queue the group: {first_line(exc)}"
            if sent == 0:
                groups.delete(self.db, group.id)
                self._drop_inputs(store, group.id)
                raise ServiceUnavailable(reason) from None
            # Messages already sent find their job failed and are dropped.
            for row in rows:
                jobs.transition(self.db, row.id, expect=[JobState.QUEUED], state=JobState.FAILED, message=reason, error=reason)
            raise ServiceUnavailable(f"{reason}; its {len(rows)} jobs are marked failed (group {group.id})") from None
        return group, rows

    def find_group(self, ref: str) -> tuple[JobGroup, builtins.list[Job]] | None:
        """A compare group and its members if `ref` names one (`cmp-…`), else None."""
        if not ref.startswith(groups.PREFIX) or (group := groups.get(self.db, ref)) is None:
            return None
        return group, groups.members(self.db, group.id)

    def group(self, ref: str) -> tuple[JobGroup, builtins.list[Job]]:
        group = groups.require(self.db, ref)
        return group, groups.members(self.db, group.id)

    def _plan(self, r: ResolvedSpec, farm: str) -> _Planned:
        queue_name = routing.queue_for(farm, r.min_capability, r.allow_remote_code,
                                       gpu=r.weights == "gpu" or r.max_vram_bytes is not None)
        if not routing.is_default(queue_name, farm) and queue_name not in queue.served_queues(self.settings.broker_url):
            raise SpecError(f"no live worker can run this job: {_needs(r)}, and no worker serving queue {queue_name} answered")
        # Before anything is written, so a failure here leaves nothing behind.
        return _Planned(queue_name, [e.as_dict() for e in self.estimates(r, queue_name)] or None)

    def _upload_inputs(self, owner: str, r: ResolvedSpec) -> tuple[Store | None, dict | None, dict]:
        """Calibration/evaluation texts and task directories go to the store
        under inputs/<owner>/, so any worker can read them; returns the
        calib and eval fields rewritten to point there. An `s3://` text is
        read here, with the submitter's credentials, and travels the same
        way: a worker reads only what the job carries, never an object its
        own credentials would reach."""
        calib = dict(vars(r.calib)) if r.calib else None
        evals = dict(vars(r.eval))
        found = r.inputs
        assert found is not None  # resolve() found them
        texts = [(d, name, text) for d, name, text in ((calib, "calib", found.calib), (evals, "eval", found.eval))
                 if d is not None and text is not None and text.travels]
        if not texts and found.tasks_dir is None:
            return None, calib, evals
        with tempfile.TemporaryDirectory(prefix="qfarm-inputs-") as tmp:
            files = [(d, "source", name, text.path or _read_s3_text(text.given, Path(tmp) / name, name))
                     for d, name, text in texts]
            if found.tasks_dir is not None:
                files.append((evals, "tasks_dir", "tasks", found.tasks_dir))
            store = open_store(self.settings.storage_url)
            store.check()
            for d, key, name, path in files:
                d[key] = self._upload_input(store, owner, path, name)
        return store, calib, evals

    @staticmethod
    def _upload_input(store: Store, owner: str, path: Path, name: str) -> str:
        """A file, or a directory as a tar.gz, under inputs/<owner>/ (each checked by resolve())."""
        if path.is_dir():
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "tasks.tar.gz"
                with tarfile.open(archive, "w:gz") as tar:
                    # Links inside the directory travel as the files they name.
                    tar.add(path, arcname=".", filter=_dereferenced(path))
                return Client._upload_input(store, owner, archive, name)
        suffix = ".tar.gz" if path.name.endswith(".tar.gz") else path.suffix.lower()
        key = f"inputs/{owner}/{name}{suffix}"
        store.put_file(path, key)
        store.verify(path, key, sha256_file(path))
        return store.uri(key)

    @staticmethod
    def _drop_inputs(store: Store | None, owner: str) -> None:
        if store is not None:
            store.delete_prefix(f"inputs/{owner}/")

    def estimates(self, r: ResolvedSpec, queue_name: str) -> builtins.list[estimate.Estimate]:
        """The job's time on each kind of live worker that serves its queue
        (a CPU and an H100 where none answers); none without the model's size
        (an s3:// or hub model is only measured on the worker)."""
        if not (r.param_count and r.model_bytes):
            return []
        names = sorted({w.gpu_name or "cpu" for w in self.workers() if queue_name in (w.queues or [])}) or ["cpu", "NVIDIA H100"]
        calib = r.calib or None
        text_tokens = estimate.BUILTIN_EVAL_TOKENS
        if r.inputs is not None and r.inputs.eval.text is not None:  # a local file, read at resolve()
            text_tokens = int(len(r.inputs.eval.text) / estimate.CHARS_PER_TOKEN)
        return [estimate.estimate(r.method, r.format, r.param_count / 1e6, r.layers or 1, r.model_bytes / 1e9,
                                  calib.samples if calib else None, calib.seqlen if calib else None,
                                  r.eval.seqlen, r.eval.windows, text_tokens, r.context, name,
                                  max_vram_gb=r.max_vram_bytes / 1e9 if r.max_vram_bytes else None,
                                  decode_tokens=r.eval.decode_tokens)
                for name in names]

    def waiting(self, job_ref: str) -> str | None:
        """Why a queued job has not started, in one line: no live worker
        serves its queue (it waits until one starts), or the jobs ahead of
        it. None for a job that is not queued, or next in line."""
        job = self.status(job_ref)
        if job.state != JobState.QUEUED.value:
            return None
        if not any(job.queue in (w.queues or []) for w in self.workers()):
            return f"queued; no live worker serves {job.queue}: start one (`qfarm worker start`)"
        ahead = self.queue_ahead(job.id)
        if not ahead:
            return None
        first = ", ".join(f"{j.id} {j.method} ({j.state})" for j in ahead[:3])
        return f"queued behind {len(ahead)} job(s): {first}{', …' if len(ahead) > 3 else ''}"

    def queue_ahead(self, job_ref: str) -> builtins.list[Job]:
        """Jobs that run before this queued one: those running on its queue,
        and those queued on it earlier."""
        job = self.status(job_ref)
        if job.state != JobState.QUEUED.value:
            return []
        def order(j: Job) -> tuple[int, Any, str]:
            return queue.PRIORITIES[j.priority], j.created_at, j.id

        ahead = [j for j in jobs.list_jobs(self.db, state=JobState.RUNNING.value, limit=1000) if j.queue == job.queue]
        ahead += sorted((j for j in jobs.list_jobs(self.db, state=JobState.QUEUED.value, limit=1000)
                         if j.queue == job.queue and order(j) < order(job)), key=order)
        return ahead

    # -- reading -----------------------------------------------------------
    def status(self, job_ref: str) -> Job:
        return jobs.get(self.db, job_ref)

    def list(self, state: str | None = None, limit: int = 50, user: str | None = None) -> builtins.list[Job]:
        if state is not None and state not in {s.value for s in JobState}:
            raise SpecError(f"unknown state {state!r} (choose from {', '.join(s.value for s in JobState)})")
        return jobs.list_jobs(self.db, state=state, limit=limit, user=user)

    def events(self, job_id: str, after_id: int = 0) -> builtins.list[JobEvent]:
        return jobs.events(self.db, job_id, after_id)

    def workers(self, include_gone: bool = False) -> builtins.list[Worker]:
        """Workers whose heartbeat is younger than QFARM_HEARTBEAT_TIMEOUT
        (with `include_gone`, the lost and stopped ones too)."""
        if include_gone:
            return workers.every(self.db)
        return workers.live(self.db, self.settings.heartbeat_timeout_s)

    def stages_of(self, job_ids: builtins.list[str]) -> dict[str, str | None]:
        """The current stage of each job named (those the database knows)."""
        return jobs.stages(self.db, job_ids)

    def watch(self, job_ref: str, poll_s: float = 1.0, timeout_s: float | None = None,
              on_idle: Callable[[Job], Any] | None = None) -> Iterator[JobEvent]:
        """Yield the job's events as they happen, until it ends; `on_idle`
        gets the job's row after every poll that brought no event."""
        job = self.status(job_ref)
        last, deadline = 0, None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            seen = last
            for ev in self.events(job.id, last):
                last = ev.id
                yield ev
            job = self.status(job.id)
            if JobState(job.state).terminal:
                for ev in self.events(job.id, last):
                    yield ev
                return
            if on_idle is not None and last == seen:
                on_idle(job)
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
    def cancel(self, job_ref: str, force: bool = False) -> Cancelled:
        """Cancel a queued or running job. Another user's job only with
        `force`; the event records who cancelled it."""
        job = self.status(job_ref)
        user = self.user
        if JobState(job.state).terminal:
            raise QFarmError(f"job {job.id} already {job.state}")
        self._may_act_on(job, "cancel")
        if job.submitted_by != user and not force:
            raise QFarmError(f"job {job.id} was submitted by {job.submitted_by}, not {user}: "
                             f"pass --force to cancel another user's job")
        was = JobState(job.state)
        by = f"cancelled by {user}" + (f" (--force; submitted by {job.submitted_by})" if job.submitted_by != user else "")
        if not jobs.transition(self.db, job.id, expect=[JobState.QUEUED, JobState.RUNNING],
                               state=JobState.CANCELLED, message=by):
            job = self.status(job.id)
            raise QFarmError(f"job {job.id} already {job.state}")
        # Revoked whatever the state read before: a queued job may have been
        # claimed since. A worker drops a revoked or cancelled job's message;
        # a running one is stopped now, or, without a broker, by its worker's
        # next heartbeat.
        try:
            queue.check_broker(self.settings.broker_url)
            queue.revoke(self.settings.broker_url, job.id, terminate=True)
        except Exception as exc:  # noqa: BLE001 - said to the user, and the heartbeat stops it
            return Cancelled(self.status(job.id), was == JobState.QUEUED, first_line(exc))
        return Cancelled(self.status(job.id), True)

    def requeue(self, job_ref: str) -> Job:
        """Send a queued job's message again (one the broker lost), or hand a
        running job whose worker is dead to the next worker. A doubled
        message is harmless: a job is claimed once."""
        job = self.status(job_ref)
        self._may_act_on(job, "requeue")
        queue.check_broker(self.settings.broker_url)  # before anything changes
        if job.state == JobState.RUNNING.value:
            lost = liveness.lost_reason(job, workers.get(self.db, job.worker), self.settings)
            if lost is None:
                raise QFarmError(f"job {job.id} is running on {job.worker}, whose heartbeat is current or whose job "
                                 f"process still advances: not requeued")
            reason = f"requeued by {self.user}: {lost}"
            if not lifecycle.hand_back(self.db, job, reason, self.settings, self.farm()):
                raise QFarmError(f"job {job.id} changed meanwhile; look again")
        elif job.state != JobState.QUEUED.value:
            raise QFarmError(f"job {job.id} is {job.state}: only queued or running jobs can be requeued")
        else:
            queue.enqueue(self.settings.broker_url, job.id, job.queue, self.farm(), job.priority)
            jobs.note(self.db, job.id, f"message sent again by {self.user} (qfarm requeue)")
        return self.status(job.id)

    def _may_act_on(self, job: Job, verb: str) -> None:
        """Refuse, in one line, to `verb` another user's job without the
        right to (PostgreSQL: the qfarm_admin role, which the database
        enforces too; SQLite: anyone, on the honour system)."""
        if job.submitted_by == self.user or not roles.is_postgres(self.db) or roles.acts_for_all(self.db):
            return
        raise QFarmError(f"job {job.id} was submitted by {job.submitted_by}, not {self.user}: to {verb} another "
                         f"user's job the role {self.user} needs qfarm_admin (GRANT qfarm_admin TO {self.user})")

    def download(self, job_ref: str, dest: Path, progress: Callable[[dict], Any] | None = None) -> dict:
        job = self.status(job_ref)
        if job.state != JobState.SUCCEEDED.value or not job.artifact_uri:
            raise QFarmError(f"job {job.id} is {job.state}: it has no artifact to download")
        return artifacts.download(job.artifact_uri, dest, progress)

    def publish(self, ref: str, repo: str, **options: Any) -> builtins.list[Any]:
        """Publish a job's artifact (or a compare group's) to a model hub
        repo with its model card (api_client/app/publish.py); one Published each."""
        from api_client.app import publish

        return publish.publish(self.db, ref, repo, user=self.user, **options)

    def publications(self, job_id: str) -> builtins.list[Publication]:
        return publications.of_job(self.db, job_id)

    def gc(self, older_than_s: float = 86400, delete: bool = False) -> builtins.list[artifacts.Incomplete]:
        """Artifacts without a manifest (uploads cut short) older than
        `older_than_s`, whose job is not queued or running; deleted only
        with `delete`."""
        store = open_store(self.settings.storage_url)
        active = {j.id for state in ("queued", "running") for j in jobs.list_jobs(self.db, state=state, limit=100_000)}
        found = [a for a in artifacts.incomplete(store, older_than_s) if a.job_id not in active]
        if delete:
            for a in found:
                store.delete_prefix(a.prefix)
        return found


def upgrade_database(settings: Settings | None = None) -> tuple[str, str]:
    """Create or migrate the job database to the newest schema (Alembic);
    where it is (password masked) and the schema it is at."""
    database = Database((settings or Settings.from_env()).database_url)
    try:
        head = database.upgrade()
    except Exception as exc:  # noqa: BLE001 - an unexpected failure: one line, the traceback on request
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise QFarmError(f"cannot migrate the database at {database.display_url}: {reason}") from None
    finally:
        database.dispose()
    return database.display_url, head


def _read_s3_text(source: str, dest_dir: Path, purpose: str) -> Path:
    """Download an `s3://` calibration or evaluation text with this
    client's credentials (its size checked first) into `dest_dir`, checked
    as a local file would be."""
    from api_client.config import max_text_bytes

    what = "calibration text" if purpose == "calib" else "evaluation text"
    loc = sources.parse_s3_url(source)
    theirs, name, size = open_object(f"s3://{loc.bucket}/{loc.key}")
    if size is None:
        raise SpecError(f"{what} {source} does not exist (or these credentials cannot list it)")
    if size > max_text_bytes():
        raise SpecError(f"{what} {source} is {size / 2**20:.1f} MiB, more than the {max_text_bytes() / 2**20:.0f} MiB "
                        f"a text may be (QFARM_MAX_TEXT_BYTES)")
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / name
    theirs.get_file(name, dest)
    try:
        return inputs.read_local_text(str(dest), what.split()[0])[0]
    except SpecError as exc:
        raise SpecError(str(exc).replace(str(dest), source)) from None


def _needs(r: ResolvedSpec) -> str:
    needs = []
    if r.weights == "gpu" or r.max_vram_bytes is not None:
        needs.append("--weights gpu and --max-vram need a GPU worker")
    if r.min_capability:
        major, minor = r.min_capability
        needs.append(f"--method {r.method} needs a GPU of compute capability {major}.{minor} or newer (Ada, Hopper)")
    if r.allow_remote_code:
        needs.append("--allow-remote-code needs a worker started with --allow-remote-code")
    return "; ".join(needs)
