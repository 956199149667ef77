"""What a job may make this worker read with the farm's credentials.

`qfarm submit` reads a job's calibration and evaluation texts and its task
directory with the submitter's own rights (a local file, or an `s3://`
object fetched with the client's credentials) and uploads them under the
farm store's `inputs/<job or its compare group>/`: a worker reads a job's
inputs from there and nowhere else, so a job row or message naming
`s3://otherteam/secret.txt`, another job's inputs or a path of the worker's
disk is refused, not read. Models are too large to travel
through a client: an `s3://` model is read only from a prefix the farm
allows (QFARM_INPUT_PREFIXES); a local model sits on a filesystem the
workers share, as it always did.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from api_client.contract import sources
from api_client.errors import QFarmError
from api_client.infra.db import Job
from api_client.infra.storage import Store, StoreError

INPUTS = "inputs/"


def check(job: Job, store: Store) -> None:
    """Refuse, in one line, an input the job may not make this worker read."""
    calib, evals = job.calib or {}, job.eval or {}
    owners = {job.id} | ({job.group_id} if job.group_id else set())
    for what, source in (("calibration text", calib.get("source")), ("evaluation text", evals.get("source")),
                         ("task directory", evals.get("tasks_dir"))):
        if source is None or (what != "task directory" and sources.text_source_kind(source) in ("builtin", "hf")):
            continue
        if not _in_inputs(source, store, owners):
            raise QFarmError(f"the job's {what} {source} is not among the inputs uploaded with it "
                             f"({store.uri(INPUTS + job.id)}/): a worker reads only those (qfarm submit reads a local "
                             f"or s3:// text with the submitter's credentials and uploads it)")
    if sources.model_source_kind(job.model) == "s3":
        sources.check_model_prefix(job.model, on_worker=True)


def _in_inputs(source: str, store: Store, owners: set[str]) -> bool:
    """Whether `source` is under inputs/<owner>/ of this store, for one of
    `owners` (the job, its compare group): what `qfarm submit` uploaded for it."""
    try:
        key = PurePosixPath(store.key_of(source))
    except (StoreError, QFarmError):
        return False
    return (len(key.parts) > 2 and key.parts[0] == INPUTS.rstrip("/") and key.parts[1] in owners
            and ".." not in key.parts)
