"""Where a model, a calibration text or an evaluation text comes from.

A source is written as a string on the command line and stored as that string;
this module says what kind it is and checks, before anything is queued, what
can be checked from the submitting machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from api_client.config import input_prefixes
from api_client.errors import QFarmError, SpecError, printable
from api_client.redaction import has_credentials, redact

BUILTIN = "builtin"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_HF_DATASET = re.compile(r"^hf:(?P<name>[\w.\-]+(/[\w.\-]+)?)(:(?P<config>[\w.\-]+))?(@(?P<split>[\w.\-\[\]:%]+))?$")
# A hub dataset: `owner/name` or a canonical `name`, each part starting with a
# letter or digit, so never `.`, `..`, `./x` or `../scratch`.
_HUB_DATASET = re.compile(r"^[A-Za-z0-9][\w\-]*(\.[\w\-]+)*(/[A-Za-z0-9][\w\-]*(\.[\w\-]+)*)?$")
# `datasets`' builders (5.2, and the ones it resolves by name), which read
# local files or caches: never a hub name (`pandas` unpickles, `cache` reads
# other jobs' cached datasets, `text` reads a directory).
PACKAGED_BUILDERS = frozenset((
    "arrow", "audiofolder", "cache", "conll", "csv", "eval", "fasta", "fastq", "genbank", "generator", "harbor",
    "hdf5", "iceberg", "imagefolder", "json", "lance", "meshfolder", "mmcif", "niftifolder", "pandas", "parquet",
    "pdb", "pdffolder", "spark", "sql", "text", "tsfile", "videofolder", "vortex", "webdataset", "xml",
))


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Url:
    if not url.startswith("s3://"):
        raise SpecError(f"not an s3:// URL: {url}")
    if has_credentials(url):
        raise SpecError(f"{redact(url)} holds credentials: give S3 keys through the environment or ~/.aws")
    rest = url[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise SpecError(f"s3 URL has no bucket: {url}")
    return S3Url(bucket, key)


MAX_SOURCE_CHARS = 1024
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".md")


def check_source_text(source: str, what: str) -> None:
    """What every source string must be before it is looked at further:
    short, printable, and free of credentials (they come from boto3's chain
    or the environment, never from a URL that is stored and shown)."""
    if not source or len(source) > MAX_SOURCE_CHARS:
        raise SpecError(f"{what} must be 1 to {MAX_SOURCE_CHARS} characters, not {len(source)}")
    if not source.isprintable():
        raise SpecError(f"{what} '{printable(source)}' holds control characters")
    if has_credentials(source) or redact(source) != source:
        # A source is stored in the job's row and shown by `list` and
        # `status`: one holding what the redaction masks (a token in a path,
        # a secret's value) is refused rather than stored.
        raise SpecError(f"{what} {redact(source)} holds credentials or a secret: qfarm never stores them; "
                        f"give S3 keys through the environment or ~/.aws, and the hub token as HF_TOKEN")


def model_source_kind(model: str) -> str:
    """'s3', 'local' or 'hub'. A string that names an existing path, or looks
    like one, is local; a bare `org/name` that is no path is a hub id."""
    check_source_text(model, "model")
    if model.startswith("s3://"):
        parse_s3_url(model)
        return "s3"
    try:
        exists = Path(model).expanduser().exists()
    except (OSError, RuntimeError):
        exists = False
    if model.startswith(("/", "./", "../", "~", "file://")) or exists:
        return "local"
    if _HUB_ID.match(model):
        return "hub"
    raise SpecError(f"model {model!r} is neither a local directory, an s3:// prefix nor a Hugging Face id")


def local_model_path(model: str) -> Path:
    if model.startswith("file://"):
        model = model[len("file://"):]
    try:
        return Path(model).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise SpecError(f"model path {printable(model)} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None


def check_model_prefix(model: str, on_worker: bool) -> None:
    """An `s3://` model is read by a worker with the farm's credentials,
    which can reach other teams' objects: only from a prefix the farm allows
    (QFARM_INPUT_PREFIXES). A client without the variable leaves the
    question to the worker, which refuses every s3:// model without it."""
    prefixes = input_prefixes()
    if prefixes is None and not on_worker:
        return
    if not any(_under(model, p) for p in prefixes or []):
        allowed = f"the prefixes it allows: {', '.join(prefixes)}" if prefixes else "none is set"
        raise SpecError(f"model {model} is not under QFARM_INPUT_PREFIXES ({allowed}): workers read s3:// models only "
                        f"from prefixes the farm allows")


def _under(url: str, prefix: str) -> bool:
    if ".." in url.split("/"):
        return False
    return (url.rstrip("/") + "/").startswith(prefix.rstrip("/") + "/")


@dataclass(frozen=True)
class HFDataset:
    name: str
    config: str | None
    split: str


def text_source_kind(source: str) -> str:
    """'builtin', 's3', 'hf' or 'local' for a calibration or evaluation source."""
    check_source_text(source, "text source")
    if source == BUILTIN:
        return "builtin"
    if source.startswith("s3://"):
        parse_s3_url(source)
        return "s3"
    if source.startswith("hf:"):
        parse_hf_dataset(source)
        return "hf"
    return "local"


def parse_hf_dataset(source: str) -> HFDataset:
    m = _HF_DATASET.match(source)
    if not m:
        raise SpecError(f"bad dataset source {source!r}: write hf:NAME[:CONFIG][@SPLIT], e.g. hf:wikitext:wikitext-2-raw-v1@train")
    why = hub_dataset_problem(m.group("name"))
    if why:
        raise SpecError(f"dataset source {source}: {why}")
    return HFDataset(m.group("name"), m.group("config"), m.group("split") or "train")


def hub_dataset_problem(name: str, base: Path | None = None) -> str | None:
    """Why `name` is no hub dataset name (None: it is one). `datasets` reads
    a name that is a local path, or one of its builders, from the disk of
    whoever loads it: another job's scratch beside the working directory."""
    if not _HUB_DATASET.match(name):
        return f"{name!r} is not a hub dataset name (owner/name)"
    if name in PACKAGED_BUILDERS:
        return f"{name} is one of the datasets library's file readers, not a hub dataset"
    try:
        local = (base or Path.cwd()) / name
        exists = local.exists() or local.with_suffix(".py").exists()
    except OSError:
        exists = False
    if exists:
        return f"{name} is a path here, which the datasets library would read instead of the hub"
    return None


def check_hub_model(model: str) -> None:
    """Refuse a hub id the hub says does not exist (a mistyped local path
    looks like one). Where the hub cannot be reached from here (offline, or
    HF_HUB_OFFLINE=1) an `org/name` id is accepted, as a worker may reach it;
    a bare name is taken for the mistyped path it most likely is."""
    import os
    import urllib.error
    import urllib.request

    _check_not_a_mistyped_path(model)
    if "/" not in model:
        unconfirmed = SpecError(f"model {model} is no local directory, and the Hugging Face hub could not be reached "
                                f"to confirm a model of that name: give a path (./{model}) or the hub's org/name")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        if "/" not in model:
            raise unconfirmed
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{model}", method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        urllib.request.urlopen(request, timeout=3).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 404):
            private = "" if token else " (or it is private: set HF_TOKEN)"
            raise SpecError(f"model {model} is no local directory, and the Hugging Face hub has no model {model}{private}") from None
    except (OSError, ValueError):
        if "/" not in model:
            raise unconfirmed from None
        return


def hub_config(model: str) -> dict | None:
    """The hub model's config.json, or None where the hub cannot be reached
    from here (the worker reads it again when the job starts) or it has none."""
    import json
    import os
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in model:
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/{model}/resolve/main/config.json")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            config = json.loads(response.read(1 << 20))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def _check_not_a_mistyped_path(model: str) -> None:
    """`shared/refmodl` where `shared/` is a directory here is a path with a
    typo, not the hub's organization `shared`: refused, with the nearest name."""
    import difflib

    org, _, name = model.partition("/")
    if not name or not Path(org).is_dir():
        return
    try:
        near = difflib.get_close_matches(name, [p.name for p in Path(org).iterdir()], n=1)
    except OSError:
        near = []
    hint = f"did you mean {org}/{near[0]}?" if near else f"give the path of the model's directory in {org}/"
    raise SpecError(f"model {model} is no local directory, though {org}/ is one: {hint}")


def check_local_text(source: str, what: str) -> Path:
    """A local calibration or evaluation file: a regular file (a directory,
    FIFO or device is named as what it is), not empty, no larger than
    QFARM_MAX_TEXT_BYTES, decoded as a worker will decode it."""
    from api_client.contract.corpus import decode_text, not_a_file, read_bounded

    try:
        path = Path(source).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise SpecError(f"{what} file {source} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    why = not_a_file(path)
    if why:
        raise SpecError(f"{what} file {source} {why}")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise SpecError(f"{what} file {source} must be .txt, .md or .jsonl (one JSON object with a 'text' field per line)")
    try:
        raw = read_bounded(path, f"{what} file")
    except QFarmError as exc:
        raise SpecError(str(exc).replace(str(path), source, 1)) from None
    if not raw:
        raise SpecError(f"{what} file {source} is empty")
    try:  # read as a worker will, so a malformed file fails here, naming the user's file
        decode_text(raw, path.name)
    except QFarmError as exc:
        raise SpecError(f"{what} file {source}: {str(exc).removeprefix(path.name + ' ')}") from None
    return path
