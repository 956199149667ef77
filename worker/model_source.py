"""Bring the model a job names onto this worker's disk."""

from __future__ import annotations

from pathlib import Path

from api_client import sources
from api_client.errors import QFarmError

# What a causal LM checkpoint needs; other files in a repo (training state,
# GGUF copies, images) are left behind.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.py"]


def fetch(model: str, dest: Path, s3_endpoint_url: str | None) -> Path:
    kind = sources.model_source_kind(model)
    if kind == "local":
        path = sources.local_model_path(model)
        if not path.is_dir():
            raise QFarmError(
                f"model directory {path} does not exist on this worker; a local MODEL must sit on a filesystem "
                f"every worker mounts at the same path (or upload it and submit its s3:// prefix)"
            )
        return path
    if kind == "s3":
        from api_client.storage.s3 import S3Store

        store = S3Store(model, s3_endpoint_url)
        objects = store.list("")
        if not any(o.key == "config.json" for o in objects):
            raise QFarmError(f"{model} holds no config.json: not a Hugging Face checkpoint prefix")
        for obj in objects:
            store.get_file(obj.key, dest / obj.key)
        return dest
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_dir=dest, allow_patterns=HUB_PATTERNS))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QFarmError(f"cannot download {model} from the Hugging Face hub: {first}") from None
