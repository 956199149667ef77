"""A job's inputs (its model, its calibration and evaluation texts, its
lm-eval task directory) resolved and checked in one pass, before anything is
queued.

`api_client/contract/sources.py` says how a source string is read (which
kind it is, what an s3:// URL or an hf: dataset holds); this module looks at
what the submitting machine finds there, once: a local model's checkpoint is
inspected, a local text read and decoded as a worker will decode it, a hub
id asked of the hub, a task directory checked. What it found travels on as
`Inputs`: the spec's checks against the method, the windows count, the
upload and the estimate use these objects and never classify or read the
strings again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_client.contract import checkpoint, lm_eval_tasks, sources
from api_client.contract.checkpoint import CheckpointInfo
from api_client.contract.corpus import builtin_text, decode_text, not_a_file, read_bounded
from api_client.errors import QFarmError, SpecError, printable

TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".md")


@dataclass(frozen=True)
class ModelInput:
    given: str
    kind: str  # "local", "hub" or "s3"
    # What the job row stores: the resolved directory of a local model, else the string given.
    ref: str
    checkpoint: CheckpointInfo | None = None  # a local model's files
    # The model's config.json: a local model's, or the hub's where it answered.
    config: dict | None = None


@dataclass(frozen=True)
class TextInput:
    given: str
    kind: str  # "builtin", "local", "s3" or "hf"
    path: Path | None = None  # a local file, resolved
    # A local file's text as a worker decodes it (read once, here).
    text: str | None = None

    @property
    def travels(self) -> bool:
        """Uploaded with the job: a worker reads only what the job carries
        (an s3:// text is read with the submitter's credentials, not the farm's)."""
        return self.kind in ("local", "s3")


@dataclass(frozen=True)
class Inputs:
    model: ModelInput
    calib: TextInput | None  # None: the method takes no calibration data
    eval: TextInput
    tasks_dir: Path | None = None  # checked, resolved


def resolve(model: str, calib: str | None, evals: str, tasks_dir: str | None = None,
            tasks: list[str] | None = None, allow_code: bool = False) -> Inputs:
    """Every input of a job, each looked at once, in the order a user would
    fix them: the model, then the texts, then the task directory."""
    found_model = resolve_model(model, allow_code)
    found_calib = resolve_text(calib, "calibration") if calib is not None else None
    found_eval = resolve_text(evals, "evaluation")
    found_tasks = lm_eval_tasks.check_tasks_dir(tasks_dir, tasks or [], allow_code) if tasks_dir is not None else None
    return Inputs(found_model, found_calib, found_eval, found_tasks)


def resolve_model(model: str, allow_code: bool) -> ModelInput:
    """A local directory is inspected (a checkpoint with a tokenizer, files
    that stay inside it); a hub id must exist on the hub where it can be
    asked; an s3:// model must lie under a prefix the farm allows."""
    kind = sources.model_source_kind(model)
    if kind == "local":
        path = sources.local_model_path(model)
        info = checkpoint.inspect(path, allow_code)
        checkpoint.check_quantizable(info, None)  # the method's group size is the spec's to check
        checkpoint.check_tokenizer(info)
        return ModelInput(model, kind, str(path), info, info.config)
    if kind == "hub":
        _check_hub_model(model)
        return ModelInput(model, kind, model, config=_hub_config(model))
    sources.check_model_prefix(model, on_worker=False)
    return ModelInput(model, kind, model)


def _hub_request(path: str, method: str = "GET") -> Any:
    """A request to the hub (HF_ENDPOINT), with HF_TOKEN where one is set."""
    import os
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/{path}", method=method)
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    return request


def _check_hub_model(model: str) -> None:
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
    try:
        urllib.request.urlopen(_hub_request(f"api/models/{model}", "HEAD"), timeout=3).close()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 404):
            private = "" if os.environ.get("HF_TOKEN") else " (or it is private: set HF_TOKEN)"
            raise SpecError(f"model {model} is no local directory, and the Hugging Face hub has no model {model}{private}") from None
    except (OSError, ValueError):
        if "/" not in model:
            raise unconfirmed from None
        return


def _hub_config(model: str) -> dict | None:
    """The hub model's config.json, or None where the hub cannot be reached
    from here (the worker reads it again when the job starts) or it has none."""
    import json
    import os
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE") == "1" or "/" not in model:
        return None
    try:
        with urllib.request.urlopen(_hub_request(f"{model}/resolve/main/config.json"), timeout=5) as response:
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


def resolve_text(source: str, what: str) -> TextInput:
    """`what` is "calibration" or "evaluation". A local file is read and
    decoded here; a builtin text is the package's (read only if it is
    counted); an s3:// text is read at upload (it needs the store), an hf:
    dataset on the worker."""
    kind = sources.text_source_kind(source)
    if kind == "local":
        path, text = read_local_text(source, what)
        return TextInput(source, kind, path, text)
    return TextInput(source, kind)


def read_local_text(source: str, what: str) -> tuple[Path, str]:
    """A local calibration or evaluation file: a regular file (a directory,
    FIFO or device is named as what it is), not empty, no larger than
    QFARM_MAX_TEXT_BYTES, decoded as a worker will decode it, so a malformed
    file fails here, naming the user's file."""
    try:
        path = Path(source).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise SpecError(f"{what} file {printable(source)} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
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
    try:
        return path, decode_text(raw, path.name)
    except QFarmError as exc:
        raise SpecError(f"{what} file {source}: {str(exc).removeprefix(path.name + ' ')}") from None


def check_windows(found: Inputs, calib_seqlen: int | None, calib_samples: int | None, eval_seqlen: int | None,
                  default_calib_seqlen: int) -> None:
    """Windows no longer than the model's context, and texts long enough for
    the windows asked for, counted with the model's own tokenizer where it
    has a tokenizer.json (and the `tokenizers` library is installed). Only
    a local model's files and the texts read here can be counted."""
    info = found.model.checkpoint
    if info is None:
        return
    context = info.context
    for flag, seqlen in (("--calib-seqlen", calib_seqlen if found.calib else None), ("--eval-seqlen", eval_seqlen)):
        if isinstance(context, int) and seqlen is not None and seqlen > context:
            raise SpecError(f"{flag} {seqlen} is longer than the model's context of {context} tokens "
                            f"(max_position_embeddings in config.json)")
    tokenizer = next((f.target for f in info.files if f.name == "tokenizer.json"), None)
    if tokenizer is None:
        return
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    tok = Tokenizer.from_file(str(tokenizer))
    calib = found.calib
    if calib is not None and (calib_text := _readable(calib, "calib")) is not None:
        # A count asked for must be there; the worker's default count takes
        # what the text holds (and says so), but needs one window at least.
        seqlen = calib_seqlen or default_calib_seqlen
        have = _windows(tok, calib_text, seqlen, calib_samples)
        if have == 0:
            raise SpecError(f"calibration text {calib.given} is shorter than one window of {seqlen} tokens with this "
                            f"model's tokenizer: give a longer text or shorter windows (--calib-seqlen)")
        if calib_samples is not None and have < calib_samples:
            raise SpecError(f"calibration text {calib.given} holds {have} windows of {seqlen} tokens with this "
                            f"model's tokenizer, fewer than --calib-samples {calib_samples}: ask for {have} or fewer, "
                            f"shorter windows (--calib-seqlen), or a longer text")
    if (eval_seqlen is not None and (text := _readable(found.eval, "eval")) is not None
            and _windows(tok, text, eval_seqlen, 1) < 1):
        raise SpecError(f"evaluation text {found.eval.given} is shorter than one window of {eval_seqlen} tokens")


def _readable(source: TextInput, purpose: str) -> str | None:
    """The text where it can be counted here: a local file's, or the builtin book."""
    return builtin_text(purpose) if source.kind == "builtin" else source.text


def _windows(tok: Any, text: str, seqlen: int, want: int | None = None) -> int:
    """Windows of `seqlen` tokens the text holds (counting at most `want`:
    only as much text is tokenized as that many windows could need)."""
    if want:
        text = text[: want * seqlen * 12]  # no token is longer than 12 characters here
    return len(tok.encode(text, add_special_tokens=False).ids) // seqlen
