"""Which files of a model directory (or `s3://` prefix) a job may read.

A model is user input: a directory can hold a symlink to `/proc/self/environ`
or `/etc/passwd`, a FIFO that blocks a reader forever, or a shard index that
names `../../secret`. Libraries follow all of these without a word, and
whatever they read ends up in the artifact, readable by everyone who reads the
store. So qfarm decides which files a job reads, before any library opens one:

- only files a causal-LM checkpoint needs (`WANTED`), at the top level of the
  directory; others (training state, images, other formats) are never read,
  so never copied into an artifact;
- each of them a regular file that resolves inside the directory (or, for a
  Hugging Face cache snapshot, inside that repository's `blobs/`);
- model code (`*.py`, referenced by `auto_map`) only for jobs that allow
  remote code.

The client checks this at submit; the worker checks it again on its own
filesystem and hands the libraries a directory holding only the files that
passed (`worker/model_source.py`).
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from api_client.errors import SpecError

# What transformers, llm-compressor, GPTQModel and bitsandbytes read to load a
# causal LM and its tokenizer.
WANTED = (
    "*.json", "*.safetensors", "pytorch_model*.bin", "tokenizer*", "*.model", "*.tiktoken", "*.jinja",
    "merges.txt", "vocab.txt",
)
REMOTE_CODE = ("*.py",)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Every file of a model but its weights is read whole into memory (configs,
# tokenizer files, templates): bounded, so a 2 GB tokenizer.json is refused
# in one line, at submit and on the worker, not read by each attempt until
# the kernel kills it. The largest tokenizer.json of a published model is
# some 35 MB.
MAX_SMALL_FILE_BYTES = 64 * 2**20
# Never a model, whatever a path says.
_SYSTEM_ROOTS = ("/proc", "/sys", "/dev")


def wanted(name: str, remote_code: bool) -> bool:
    patterns = WANTED + REMOTE_CODE if remote_code else WANTED
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def check_small_file(name: str, size: int, where: str) -> None:
    """Refuse a file that is no weight file and larger than MAX_SMALL_FILE_BYTES."""
    if not name.endswith(WEIGHT_SUFFIXES) and size > MAX_SMALL_FILE_BYTES:
        raise SpecError(f"model file {where} is {size / 2**20:.1f} MiB, more than the {MAX_SMALL_FILE_BYTES // 2**20} MiB "
                        f"a config or tokenizer file may be: refused")


def plain_name(name: str) -> bool:
    """A file name without directories, `..` or control characters."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name \
        and name.isprintable() and not name.startswith(".")


@dataclass(frozen=True)
class ModelFile:
    name: str
    # The file it resolves to (itself, or a symlink's checked target).
    target: Path
    size: int


def _allowed_roots(root: Path) -> list[Path]:
    roots = [root]
    # A Hugging Face cache snapshot (models--org--name/snapshots/<rev>/) is a
    # directory of symlinks into the repository's blobs/: a real directory
    # of that repository, never a link (`blobs -> /proc/self` would otherwise
    # make /proc/self/environ a "blob").
    repo, blobs = root.parent.parent, root.parent.parent / "blobs"
    if root.parent.name == "snapshots" and blobs.is_dir() and not blobs.is_symlink() \
            and blobs.resolve().parent == repo.resolve():
        roots.append(blobs.resolve())
    return roots


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _system(path: Path) -> bool:
    return any(path == Path(s) or Path(s) in path.parents for s in _SYSTEM_ROOTS)


def checked_files(root: Path, remote_code: bool = False) -> list[ModelFile]:
    """The files of `root` a job may read, each checked; one-line SpecError
    naming the file for anything that is not a regular file inside it."""
    try:
        root = root.resolve()
    except (OSError, RuntimeError) as exc:
        raise SpecError(f"model path {root} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if _system(root):
        raise SpecError(f"model path {root} is a system directory, not a model")
    if not root.is_dir():
        raise SpecError(f"model path {root} is not a directory")
    roots = _allowed_roots(root)
    out = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SpecError(f"cannot list the model directory {root}: {exc.strerror}") from None
    for entry in entries:
        if not wanted(entry.name, remote_code):
            continue
        if not plain_name(entry.name):
            raise SpecError(f"model file {entry.name!r} in {root} has an unsafe name: refused")
        path = root / entry.name
        if entry.is_symlink():
            target = Path(os.path.realpath(path))
            if not _inside(target, roots) or _system(target):
                raise SpecError(f"model file {path} is a symlink to {os.readlink(path)}, outside the model directory: refused")
        else:
            target = path
        try:
            st = os.stat(target)
        except OSError as exc:
            raise SpecError(f"model file {path} cannot be read: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(f"model file {path} is not a regular file (a device, FIFO or socket): refused")
        check_small_file(entry.name, st.st_size, str(path))
        out.append(ModelFile(entry.name, target, st.st_size))
    _check_shard_index(root, {f.name for f in out})
    return out


def _check_shard_index(root: Path, names: set[str]) -> None:
    """A sharded checkpoint's index names its shard files; transformers joins
    them to the directory, so `../x` would read outside it."""
    for index in sorted(n for n in names if n.endswith(".index.json")):
        try:
            data = json.loads((root / index).read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"{root / index} is not valid JSON: {exc}") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise SpecError(f"{root / index} has no weight_map")
        for shard in sorted(set(map(str, weight_map.values()))):
            if not plain_name(shard):
                raise SpecError(f"{root / index} names the shard {shard!r}, outside the model directory: refused")
            if shard not in names:
                raise SpecError(f"{root / index} names the shard {shard}, which the model directory does not hold")


