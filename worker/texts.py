"""Calibration and evaluation text: read from a source, cut into token windows.

Sources: `builtin` (public-domain books shipped with qfarm), a local or
`file://` text/JSONL file, an `s3://` object, or `hf:NAME[:CONFIG][@SPLIT]`
(a Hugging Face dataset, where the hub is reachable).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from api_client import sources
from api_client.errors import QFarmError, first_line
from api_client.storage import open_store
from api_client.texts import builtin_text, decode_text, universal_newlines

# A token is rarely longer than this many characters; bounds what is tokenized.
_CHARS_PER_TOKEN_MAX = 12


def load_text(source: str, purpose: str, max_chars: int | None = None) -> str:
    kind = sources.text_source_kind(source)
    if kind == "builtin":
        text = builtin_text(purpose)
    elif kind == "hf":
        text = _load_hf(sources.parse_hf_dataset(source), max_chars)
    else:
        raw, name = read_input(source, f"{purpose} file")
        text = decode_text(raw, name)
    return text[:max_chars] if max_chars else text


def read_input(source: str, what: str) -> tuple[bytes, str]:
    """The bytes and file name of a job input: an `s3://` object (what
    submit uploads a local file to), a `file://` URL or a local path."""
    if source.startswith("s3://"):
        loc = sources.parse_s3_url(source)
        parent, _, name = loc.key.rpartition("/")
        return open_store(f"s3://{loc.bucket}/{parent}").get_bytes(name), name
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source).expanduser()
    if not path.is_file():
        raise QFarmError(f"{what} {path} does not exist on this worker")
    return path.read_bytes(), path.name


def _load_hf(ds_ref: sources.HFDataset, max_chars: int | None) -> str:
    try:
        import datasets

        ds = datasets.load_dataset(ds_ref.name, ds_ref.config, split=ds_ref.split)
    except Exception as exc:  # noqa: BLE001 - any datasets failure is one line for the user
        raise QFarmError(f"cannot load dataset {ds_ref.name} from the Hugging Face hub: {first_line(exc)}") from None
    column = "text" if "text" in ds.column_names else next(
        (c for c, f in ds.features.items() if getattr(f, "dtype", None) == "string"), None)
    if column is None:
        raise QFarmError(f"dataset {ds_ref.name} has no text column")
    parts, size = [], 0
    for value in ds[column]:
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
