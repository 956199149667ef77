"""What can be learnt about a Hugging Face checkpoint without loading it:
its config, its weight files and, from the safetensors headers, the shape of
every weight. Enough to refuse, before queuing, a directory that is no
checkpoint, a model that is already quantized, one with no linear layers to
quantize, or a group size that does not divide a layer's input features."""

from __future__ import annotations

import fnmatch
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from api_client.contract.modelfiles import ModelFile, checked_files
from api_client.errors import SpecError

# Weights that quantizers leave in full precision.
_SKIP = ("embed", "lm_head", "norm", "wte", "wpe", "rotary", "position")
# A stack of layers in a weight's name: `model.layers.3.`, `transformer.h.3.`, ...
_LAYER = re.compile(r"^(?P<stack>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.")
_EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight", "embed_in.weight", "tok_embeddings.weight")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class CheckpointInfo:
    path: Path
    config: dict
    weight_files: list[Path]
    # Every file a job may read, checked (api_client/contract/modelfiles.py).
    files: list[ModelFile] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    weight_bytes: int = 0

    @property
    def context(self) -> int | None:
        """The longest sequence the model takes (max_position_embeddings)."""
        return _positive_int(self.config.get("max_position_embeddings"))

    @property
    def layers(self) -> int | None:
        return _positive_int(self.config.get("num_hidden_layers"))

    @property
    def params(self) -> int:
        total = 0
        for shape in self.shapes.values():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def quantizable_linears(self) -> dict[str, tuple[int, int]]:
        """2-D weights of linear layers that weight quantizers act on."""
        out = {}
        for name, shape in self.shapes.items():
            if len(shape) != 2 or not name.endswith(".weight"):
                continue
            if any(part in name.lower() for part in _SKIP):
                continue
            out[name[: -len(".weight")]] = (shape[0], shape[1])
        return out


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def read_safetensors_header(path: Path) -> dict:
    """The tensor entries of a safetensors header: name → {dtype, shape}.
    Anything else is refused in one line naming the file."""
    name = path.name
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SpecError(f"{name} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024:
                raise SpecError(f"{name} is not a safetensors file (header of {n} bytes)")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise SpecError(f"cannot read {name}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise SpecError(f"{name} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise SpecError(f"{name} is not a safetensors file (its header is a {type(header).__name__}, not an object)")
    header.pop("__metadata__", None)
    for tensor, meta in header.items():
        shape = meta.get("shape") if isinstance(meta, dict) else None
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SpecError(f"{name}: tensor {tensor!r} has no valid shape in the safetensors header")
        if not isinstance(meta.get("dtype"), str):
            raise SpecError(f"{name}: tensor {tensor!r} has no dtype in the safetensors header")
    return header


def inspect(path: Path, remote_code: bool = False) -> CheckpointInfo:
    files = {f.name: f for f in checked_files(path, remote_code)}
    path = path.resolve()
    if "config.json" not in files:
        raise SpecError(f"{path} is not a Hugging Face checkpoint: it has no config.json")
    config_path = files["config.json"].target
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path / 'config.json'} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read {path / 'config.json'}: {exc}") from None
    if not isinstance(config, dict):
        raise SpecError(f"{path / 'config.json'} is not a JSON object")
    safetensors = sorted(n for n in files if n.endswith(".safetensors"))
    bins = sorted(n for n in files if n.startswith("pytorch_model") and n.endswith(".bin"))
    if not safetensors and not bins:
        raise SpecError(f"{path} is not a Hugging Face checkpoint: it has no *.safetensors or pytorch_model*.bin weights")
    info = CheckpointInfo(path=path, config=config, weight_files=[path / n for n in safetensors or bins],
                          files=list(files.values()))
    for name in safetensors:
        header = read_safetensors_header(files[name].target)
        for tensor, meta in header.items():
            shape = tuple(meta["shape"])
            info.shapes[tensor] = shape
            n = 1
            for d in shape:
                n *= d
            info.weight_bytes += n * _DTYPE_BYTES.get(meta["dtype"], 2)
    if not safetensors:
        info.weight_bytes = sum(files[n].size for n in bins)
    return info


def _config_int(config: dict, key: str) -> int | None:
    """`key` of config.json, or of its text model's config (multimodal)."""
    text = config.get("text_config")
    value = config.get(key, text.get(key) if isinstance(text, dict) else None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_consistent(info: CheckpointInfo) -> None:
    """config.json against the weights' headers. transformers builds the
    model config.json describes and fills it from the weights: a config
    claiming 100,000 layers (weights for 6), a wider hidden size or a larger
    vocabulary has it allocate, and initialise at random, a model of the
    config's size. Refused in one line, before anything is loaded."""
    if not info.shapes:
        return  # pytorch .bin checkpoints: shapes are only known once loaded
    config = info.config
    stacks: dict[str, int] = {}
    for name in info.shapes:
        m = _LAYER.match(name)
        if m:
            stacks[m.group("stack")] = max(stacks.get(m.group("stack"), 0), int(m.group("index")) + 1)
    layers = _config_int(config, "num_hidden_layers")
    if layers is not None and stacks:
        # Multi-token prediction layers (DeepSeek-V3) are stored after the others.
        extra = _config_int(config, "num_nextn_predict_layers") or 0
        if not any(n in (layers, layers + extra) for n in stacks.values()):
            held = ", ".join(f"{n} in {stack}" for stack, n in sorted(stacks.items()))
            raise SpecError(f"{info.path}/config.json says num_hidden_layers {layers}, but the weights hold {held}: "
                            f"refused (a config that disagrees with its weights)")
    embedding = next((shape for name, shape in sorted(info.shapes.items())
                      if name.endswith(_EMBEDDINGS) and len(shape) == 2), None)
    if embedding is None:
        return
    width_key = "word_embed_proj_dim" if _config_int(config, "word_embed_proj_dim") else "hidden_size"
    for key, rows_or_width in (("vocab_size", embedding[0]), (width_key, embedding[1])):
        said = _config_int(config, key)
        if said is not None and said != rows_or_width:
            raise SpecError(f"{info.path}/config.json says {key} {said}, but the weights' embedding is "
                            f"{embedding[0]} × {embedding[1]}: refused (a config that disagrees with its weights)")


# The files transformers builds a tokenizer from: fast (tokenizer.json),
# SentencePiece (*.model), byte-level BPE (vocab.json + merges.txt), WordPiece
# (vocab.txt) or tiktoken. Without one, the worker's AutoTokenizer fails with
# a misleading "install sentencepiece or tiktoken".
TOKENIZER_FILES = ("tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken")


def check_tokenizer(info: CheckpointInfo) -> None:
    """Refuse a checkpoint without its tokenizer: every job tokenizes its
    calibration and evaluation text with it."""
    if not any(fnmatch.fnmatchcase(f.name, p) for f in info.files for p in TOKENIZER_FILES):
        raise SpecError(f"{info.path} has no tokenizer (tokenizer.json, tokenizer.model, vocab.json or *.tiktoken): "
                        f"copy the tokenizer's files beside config.json")


def check_quantizable(info: CheckpointInfo, group_size: int | None) -> None:
    """Refuse what no method could quantize, naming the problem."""
    check_consistent(info)
    qc = info.config.get("quantization_config")
    if qc:
        kind = (qc.get("quant_method") or qc.get("format") if isinstance(qc, dict) else None) or "unknown"
        raise SpecError(f"{info.path} is already quantized ({kind}); submit the unquantized checkpoint")
    if "model_type" not in info.config:
        raise SpecError(f"{info.path}/config.json has no model_type: not a transformers checkpoint")
    if not info.shapes:
        return  # pytorch .bin checkpoints: shapes are only known once loaded
    if not info.quantizable_linears():
        arch = ",".join(map(str, info.config.get("architectures") or [info.model_type]))
        raise SpecError(f"{arch} at {info.path} has no linear layers to quantize")
    check_group_size(info, group_size)


def check_group_size(info: CheckpointInfo, group_size: int | None) -> None:
    """A method's group size must divide every quantized layer's input features."""
    if group_size and info.shapes:
        for name, (_out, in_features) in sorted(info.quantizable_linears().items()):
            if in_features % group_size:
                raise SpecError(
                    f"group size {group_size} does not divide the {in_features} input features of {name}; "
                    f"choose a group size that does (or -1 for one scale per channel)"
                )
