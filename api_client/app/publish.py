"""`qfarm publish`: a job's artifact, checked against its manifest, pushed
with a model card to a model hub repo (the Hugging Face Hub, or any server
speaking its API) through huggingface_hub, and the repo and commit recorded.

The order keeps every failure harmless: the artifact is downloaded and each
file's sha256 checked first; the token's owner and the repo's namespace are
checked before anything is written; the files go up in one commit (the
hub's preupload tells which it already holds, so publishing the same job
again uploads nothing and makes no commit); the publication is recorded only
once the hub has the commit. A failure says so in one line and changes
nothing in the job's record.

The token comes from the file QFARM_HF_TOKEN_FILE names, else HF_TOKEN; it
is handed to huggingface_hub and to nothing else (never printed, stored or
put in a card), and any message that echoed it is scrubbed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from api_client.app import artifacts, model_card
from api_client.app.compare import compare
from api_client.config import Settings, qfarm_home
from api_client.contract import sources
from api_client.errors import QFarmError, SpecError, first_line, printable
from api_client.infra.db import Database, groups, jobs, publications
from api_client.infra.db.models import Job, JobState, Publication

if TYPE_CHECKING:
    from huggingface_hub import HfApi

DEFAULT_ENDPOINT = "https://huggingface.co"
# Above this, upload_large_folder: resumable (a second run picks up what a
# cut one uploaded), in several commits and without a message of ours.
LARGE_FOLDER_BYTES = 20 * 2**30
_REPO = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[A-Za-z0-9][\w.\-]{0,95}$")
_TOKEN_FILE_MAX = 4096


@dataclass
class Published:
    """What publishing one job did (or, in a dry run, would do)."""

    job_id: str
    repo: str
    endpoint: str
    files: list[dict[str, Any]]
    card: str
    url: str | None = None
    revision: str | None = None
    # False: the repo already held exactly these files (no commit was made).
    changed: bool = False
    license_note: str | None = None
    notes: list[str] = field(default_factory=list)


def read_token() -> str:
    """The hub token: the file QFARM_HF_TOKEN_FILE names, else HF_TOKEN."""
    path = Settings.from_env().hf_token_file
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.read(_TOKEN_FILE_MAX + 1)
        except OSError as exc:
            raise QFarmError(f"cannot read the token file QFARM_HF_TOKEN_FILE names: {exc.strerror or type(exc).__name__}") from None
        token = raw.decode("ascii", errors="replace").strip()
        if len(raw) > _TOKEN_FILE_MAX or not token or not token.isascii() or not token.isprintable() or " " in token:
            raise QFarmError("the file QFARM_HF_TOKEN_FILE names does not hold a token (one line of printable ASCII)")
        return token
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise QFarmError("no hub token: set HF_TOKEN, or QFARM_HF_TOKEN_FILE to a file holding it")
    return token


def check_repo(repo: str) -> None:
    if not _REPO.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise SpecError(f"REPO must be OWNER/NAME (letters, digits, '-', '_', '.'), not {printable(repo)!r}")


def targets(db: Database, ref: str, repo: str, members: str) -> list[tuple[Job, str]]:
    """The jobs `ref` names and the repo each goes to: a job to `repo`; a
    compare group's recommended member to `repo`, or (members="all") every
    member that succeeded to `repo`-<its label>."""
    if ref.startswith(groups.PREFIX) and (group := groups.get(db, ref)) is not None:
        found = groups.members(db, group.id)
        table = compare(group, found)
        by_id = {j.id: j for j in found}
        if members == "all":
            rows = [r for r in table.rows if r.job_id in by_id and r.state == JobState.SUCCEEDED.value and r.label != "original"]
            if not rows:
                raise QFarmError(f"compare group {group.id} has no member that succeeded")
            return [(by_id[r.job_id], f"{repo}-{r.label.replace(':', '-')}") for r in rows if r.job_id]
        chosen = next((r for r in table.rows if r.recommended), None)
        if chosen is None or chosen.job_id is None:
            raise QFarmError(f"compare group {group.id} recommends no member ({table.why}): publish a member by its job id")
        return [(by_id[chosen.job_id], repo)]
    return [(jobs.get(db, ref), repo)]


def publish(db: Database, ref: str, repo: str, *, user: str, endpoint: str | None = None, private: bool = False,
            dry_run: bool = False, members: str = "recommended", base_model: str | None = None,
            large_folder_bytes: int = LARGE_FOLDER_BYTES,
            progress: Callable[[str], None] | None = None) -> list[Published]:
    """Publish the job (or group) `ref` to `repo`; see the module docstring."""
    check_repo(repo)
    if members not in ("recommended", "all"):
        raise SpecError(f"--members must be recommended or all, not {members!r}")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    if not endpoint.startswith(("http://", "https://")):
        raise SpecError(f"--endpoint must be an http(s) URL, not {printable(endpoint)!r}")
    chosen = targets(db, ref, repo, members)
    for job, target in chosen:
        check_repo(target)
        if job.state != JobState.SUCCEEDED.value or not job.artifact_uri:
            raise QFarmError(f"job {job.id} is {job.state}: only a succeeded job's artifact can be published")
    token = None if dry_run else read_token()
    work = qfarm_home() / "publish"
    work.mkdir(parents=True, exist_ok=True)
    return [_publish_job(db, job, target, endpoint=endpoint, token=token, user=user, private=private, dry_run=dry_run,
                         base_model=base_model, large_folder_bytes=large_folder_bytes, work=work, progress=progress)
            for job, target in chosen]


def _publish_job(db: Database, job: Job, repo: str, *, endpoint: str, token: str | None, user: str, private: bool,
                 dry_run: bool, base_model: str | None, large_folder_bytes: int, work: Path,
                 progress: Callable[[str], None] | None) -> Published:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or False)
    base = base_model or (job.model if sources.model_source_kind(job.model) == "hub" else None)
    if not dry_run:
        # The token and the namespace first: seconds, where the download may take minutes.
        with _hub_errors(endpoint, repo, token), _transfer_protocol(endpoint):
            _check_namespace(api, repo)
    with tempfile.TemporaryDirectory(prefix=f"{job.id}-", dir=work) as tmp:
        folder = Path(tmp) / "repo"
        manifest = artifacts.download(job.artifact_uri or "", folder)
        if progress:
            progress(f"{len(manifest['files'])} files ({sum(e['bytes'] for e in manifest['files']) / 2**20:.1f} MiB) "
                     f"verified against the artifact's manifest")
        # The manifest names workers, users and internal paths: it stays in
        # the farm's store. The card says what the world needs.
        (folder / artifacts.MANIFEST).unlink()
        license_, license_note = _license(api, job, base, scrub=token)
        card = model_card.render(job, model_card.CardInputs(repo=repo, base_model=base, license=license_))
        (folder / "README.md").write_text(card)
        files = [{"path": e["path"], "bytes": e["bytes"]} for e in manifest["files"] if e["path"] != "README.md"]
        files.append({"path": "README.md", "bytes": len(card.encode())})
        out = Published(job.id, repo, endpoint, files, card, license_note=license_note)
        if dry_run:
            return out
        with _hub_errors(endpoint, repo, token), _transfer_protocol(endpoint):
            url = api.create_repo(repo, private=private, exist_ok=True)
            before = api.repo_info(repo).sha
            total = sum(f["bytes"] for f in files)
            message = f"qfarm: {job.method} → {job.format} (job {job.id})"
            if total > large_folder_bytes:
                api.upload_large_folder(repo_id=repo, folder_path=folder, repo_type="model", print_report=False)
                revision = api.repo_info(repo).sha
            else:
                revision = api.upload_folder(repo_id=repo, folder_path=folder, commit_message=message).oid
        shutil.rmtree(folder, ignore_errors=True)
    out.url, out.revision, out.changed = str(url), revision, revision != before
    last = publications.latest(db, job.id, endpoint, repo)
    if revision and (out.changed or last is None or last.revision != revision):
        publications.add(db, Publication(job_id=job.id, endpoint=endpoint, repo=repo, revision=revision,
                                         url=f"{endpoint}/{repo}", published_by=user))
    return out


def _license(api: HfApi, job: Job, base: str | None, scrub: str | None) -> tuple[str | None, str | None]:
    """The base model's license, from its card: the README.md of the local
    checkpoint the job read (where this machine has it), else the hub's
    card of `base`. None, with why, where neither says."""
    from huggingface_hub.repocard import metadata_load

    if sources.model_source_kind(job.model) == "local":
        readme = sources.local_model_path(job.model) / "README.md"
        try:
            if readme.is_file() and readme.stat().st_size < 2**20:
                found = (metadata_load(readme) or {}).get("license")
                if isinstance(found, str):
                    return found, None
        except (OSError, ValueError) as exc:
            return None, f"license not known: {readme} could not be read ({type(exc).__name__})"
    if base:
        try:
            data = api.model_info(base).card_data
            found = data.get("license") if data is not None else None
            if isinstance(found, str):
                return found, None
            return None, f"license not known: the card of {base} names none"
        except Exception as exc:  # noqa: BLE001 - the license is optional: said, and the publish goes on
            return None, f"license not known: {base}'s card could not be read ({_scrubbed(first_line(exc), scrub)})"
    return None, "license not known: the base model is no hub id (--base-model names one)"


def _check_namespace(api: HfApi, repo: str) -> None:
    """Before anything is written: the token is valid and not read-only,
    and its user (or one of its organisations) owns the namespace; a repo
    that exists under another owner is refused here, not with a 403 halfway
    through. (A fine-grained token's rights show only when it writes.)"""
    from huggingface_hub.errors import RepositoryNotFoundError

    me = api.whoami()
    if ((me.get("auth") or {}).get("accessToken") or {}).get("role") == "read":
        raise QFarmError(f"the token of {me.get('name')} is read-only: publishing needs one with write access")
    owner = repo.split("/")[0]
    mine = {me.get("name"), *(o.get("name") for o in me.get("orgs") or [])}
    if owner in mine:
        return
    try:
        api.repo_info(repo)
    except RepositoryNotFoundError:
        raise QFarmError(f"{repo}: the token's user {me.get('name')} cannot create repos under {owner} "
                         f"(its namespaces: {', '.join(sorted(n for n in mine if n))})") from None
    raise QFarmError(f"{repo} exists and belongs to {owner}, where the token's user {me.get('name')} cannot write: "
                     f"publish under your own namespace or an organisation you belong to")


@contextmanager
def _hub_errors(endpoint: str, repo: str, token: str | None) -> Iterator[None]:
    """Whatever the hub or the network does, one line that says what to do."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        yield
    except OfflineModeIsEnabled:
        raise QFarmError("HF_HUB_OFFLINE is set: huggingface_hub does not reach any hub while it is; unset it to publish") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        said = _scrubbed(exc.server_message or first_line(exc), token)[:300]
        if status == 401:
            raise QFarmError(f"the hub at {endpoint} rejected the token (401 Unauthorized): check HF_TOKEN or "
                             f"QFARM_HF_TOKEN_FILE") from None
        if status == 403:
            raise QFarmError(f"the token may not write to {repo} at {endpoint} (403 Forbidden: {said}); "
                             f"a token with write access is needed") from None
        if status == 404:
            raise QFarmError(f"{endpoint} answered 404 Not Found for {repo} ({said}): is --endpoint a hub's URL?") from None
        raise QFarmError(f"the hub at {endpoint} refused the upload to {repo} ({status}: {said})") from None
    except (httpx.TransportError, OSError) as exc:
        raise QFarmError(f"the connection to {endpoint} failed while publishing {repo} ({type(exc).__name__}: "
                         f"{_scrubbed(first_line(exc), token)}): nothing was committed; run the same command again") from None
    except ValueError as exc:
        # huggingface_hub raises ValueError for a card the hub's validate-yaml
        # refuses ("Invalid metadata in README.md") and for malformed answers.
        said = _scrubbed(" ".join(str(exc).split()), token)[:300]
        what = "the model card" if "README.md" in said else "the upload"
        raise QFarmError(f"the hub at {endpoint} refused {what} for {repo}: {said}") from None


@contextmanager
def _transfer_protocol(endpoint: str) -> Iterator[None]:
    """Large files go up through Git LFS (the `basic` transfer) to any hub
    but huggingface.co, where huggingface_hub uses Xet when hf_xet is
    installed: Xet needs the Hub's own storage service, which a self-hosted
    hub does not run. huggingface_hub reads HF_HUB_DISABLE_XET into this
    constant when imported; it is set for this upload only."""
    from huggingface_hub import constants

    if endpoint == DEFAULT_ENDPOINT:
        yield
        return
    saved = constants.HF_HUB_DISABLE_XET
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = saved


def _scrubbed(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
