"""Calibration and evaluation text: read from a source, cut into token windows.

Sources: `builtin` (public-domain books shipped with qfarm), a local or
`file://` text/JSONL file, an `s3://` object, or `hf:NAME[:CONFIG][@SPLIT]`
(a Hugging Face dataset, where the hub is reachable).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from api_client.config import max_text_bytes
from api_client.contract import sources
from api_client.contract.corpus import builtin_text, decode_text, not_a_file, read_bounded, universal_newlines
from api_client.errors import QFarmError, first_line
from api_client.infra.storage import open_object

# A token is rarely longer than this many characters; bounds what is tokenized.
_CHARS_PER_TOKEN_MAX = 12


def load_text(source: str, purpose: str, max_chars: int | None = None) -> str:
    kind = sources.text_source_kind(source)
    if kind == "builtin":
        text = builtin_text(purpose)
    elif kind == "hf":
        text = _load_hf(sources.parse_hf_dataset(source), min(max_chars or max_text_bytes(), max_text_bytes()))
    else:
        raw, name = read_input(source, f"{purpose} file")
        text = decode_text(raw, name)
    return text[:max_chars] if max_chars else text


def read_input(source: str, what: str, limit: int | None = None) -> tuple[bytes, str]:
    """The bytes and file name of a job input: an `s3://` object (what
    submit uploads a local file to), a `file://` URL or a local path; at
    most `limit` bytes (QFARM_MAX_TEXT_BYTES), refused before it is read."""
    limit = max_text_bytes() if limit is None else limit
    if source.startswith("s3://"):
        loc = sources.parse_s3_url(source)
        store, name, size = open_object(f"s3://{loc.bucket}/{loc.key}")
        if size is None:
            raise QFarmError(f"{what} {source} does not exist")
        if size > limit:
            raise QFarmError(f"{what} {source} is {size / 2**20:.1f} MiB, more than the {limit / 2**20:.0f} MiB "
                             f"a text may be (QFARM_MAX_TEXT_BYTES)")
        return store.get_bytes(name), name
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source).expanduser()
    if not_a_file(path) == "does not exist":
        raise QFarmError(f"{what} {path} does not exist on this worker")
    return read_bounded(path, what, limit), path.name


@contextmanager
def empty_working_dir() -> Iterator[None]:
    """`datasets` reads a name that is a path relative to the working
    directory from disk (a job's is beside other jobs' scratch): what loads
    a dataset by name runs from an empty directory of its own."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="qfarm-empty-") as empty:
        os.chdir(empty)
        try:
            yield
        finally:
            os.chdir(cwd)


def _load_hf(ds_ref: sources.HFDataset, max_chars: int | None) -> str:
    try:
        import datasets
        from datasets import packaged_modules

        # Checked again here (the message need not come through submit),
        # against this install's own readers too.
        why = sources.hub_dataset_problem(ds_ref.name)
        if why is None and ds_ref.name in getattr(packaged_modules, "_PACKAGED_DATASETS_MODULES", {}):
            why = f"{ds_ref.name} is one of the datasets library's file readers, not a hub dataset"
        if why:
            raise QFarmError(f"dataset source hf:{ds_ref.name}: {why}")
        with empty_working_dir():
            ds = datasets.load_dataset(ds_ref.name, ds_ref.config, split=ds_ref.split)
    except QFarmError:
        raise
    except Exception as exc:  # noqa: BLE001 - any datasets failure is one line for the user
        raise QFarmError(f"cannot load dataset {ds_ref.name} from the Hugging Face hub: {first_line(exc)}") from None
    column = "text" if "text" in ds.column_names else next(
        (c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"), None)
    if column is None:
        raise QFarmError(f"dataset {ds_ref.name} has no text column")
    parts, size = [], 0
    for row in ds:  # row by row: a column read whole could hold gigabytes
        value = row[column]
        if value:
            parts.append(value)
            size += len(value)
            if max_chars and size >= max_chars:
                break
    return universal_newlines("\n\n".join(parts))


def token_windows(tokenizer, text: str, seqlen: int, limit: int | None) -> list[list[int]]:
    """Consecutive, non-overlapping windows of `seqlen` tokens (at most `limit`)."""
    if limit:
        text = text[: limit * seqlen * _CHARS_PER_TOKEN_MAX]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(ids) // seqlen
    if limit:
        n = min(n, limit)
    return [ids[i * seqlen:(i + 1) * seqlen] for i in range(n)]
