"""How a model, calibration or evaluation source string is read.

A source is written as a string on the command line and stored as that string;
this module says what kind it is and what it names, for the client and the
worker alike. What the submitting machine finds there (a checkpoint, a text
file, the hub's answer) is api_client/contract/inputs.py's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from api_client.config import input_prefixes
from api_client.errors import SpecError, printable
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
