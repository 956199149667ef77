"""Every method qfarm offers, as the client and the worker both know it:
name, formats, options, calibration, hardware. The code that runs each is
worker/methods/<name>.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from api_client.contract.catalog.base import MethodSpec
from api_client.contract.catalog.gguf_architectures import GGUF_ARCHITECTURES, GGUF_LIBRARY, NEEDS_NEWER_GGUF
from api_client.contract.catalog.options import Params, knob
from api_client.errors import SpecError

if TYPE_CHECKING:
    from api_client.contract.checkpoint import CheckpointInfo

GROUP_SIZES = (32, 64, 128, -1)
COMPUTE_DTYPES = ("auto", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class GPTQParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale; -1: one per output channel")
    act_order: bool = knob(True, help="quantize columns in order of activation size (static ordering: no inference cost)")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")
    dampening: float = knob(0.01, low=0.0, high=1.0, help="fraction of the Hessian's mean diagonal added for stability")


class GPTQ(MethodSpec):
    """Second-order (Hessian-aware) weight quantization from calibration
    activations: compressed-tensors through llm-compressor's GPTQModifier, or
    the classic GPTQ checkpoint format through GPTQModel."""

    name = "gptq"
    summary = "GPTQ, W4A16 group 128 by default"
    formats = ("compressed-tensors", "gptq")
    calibrated = True
    options = GPTQParams

    @classmethod
    def check_format(cls, params: GPTQParams, fmt: str) -> None:
        if fmt == "gptq" and params.group_size == -1 and params.act_order:
            raise SpecError("--format gptq cannot combine --group-size -1 with --act-order; pass --no-act-order")


@dataclass(frozen=True)
class AWQParams(Params):
    bits: int = knob(4, choices=(4,), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale")
    zero_point: bool = knob(True, help="asymmetric scales with a zero point, as AutoAWQ writes them")


class AWQ(MethodSpec):
    """Activation-aware scaling of salient channels before rounding:
    compressed-tensors through llm-compressor's AWQModifier, or the
    AutoAWQ-compatible GEMM format through GPTQModel."""

    name = "awq"
    summary = "AWQ, W4A16 group 128 with zero point by default"
    formats = ("compressed-tensors", "awq")
    calibrated = True
    options = AWQParams

    @classmethod
    def check_format(cls, params: AWQParams, fmt: str) -> None:
        if fmt == "awq" and params.group_size == -1:
            raise SpecError("--format awq (GEMM) needs a group size: choose 32, 64 or 128")


@dataclass(frozen=True)
class RTNParams(Params):
    bits: int = knob(4, choices=(4, 8), help="weight bits")
    group_size: int = knob(128, choices=GROUP_SIZES, help="columns sharing one scale; -1: one per output channel")
    symmetric: bool = knob(True, off="--asymmetric", help="symmetric scales (no zero point)")


class RTN(MethodSpec):
    """Round-to-nearest, no calibration data: the baseline every calibrated
    method should beat."""

    name = "rtn"
    summary = "round-to-nearest, W4A16 group 128 by default, no calibration"
    formats = ("compressed-tensors",)
    options = RTNParams


class FP8(MethodSpec):
    """FP8 (E4M3) weights per channel and activations per token, computed at
    run time. Needs FP8 tensor cores (compute capability 8.9: Ada, Hopper and
    newer), so jobs are routed to such workers only."""

    name = "fp8"
    summary = "FP8 dynamic (W8A8 float), Ada/Hopper GPUs only"
    formats = ("compressed-tensors",)
    min_capability = (8, 9)


@dataclass(frozen=True)
class BnB4BitParams(Params):
    double_quant: bool = knob(True, help="quantize the quantization scales too (saves ~0.4 bit/param)")
    compute_dtype: str = knob("auto", choices=COMPUTE_DTYPES, help="dtype of the matmuls; auto: the model's dtype")


class NF4(MethodSpec):
    """bitsandbytes 4-bit NormalFloat, quantized as the weights load."""

    name = "nf4"
    summary = "bitsandbytes NF4 (4-bit NormalFloat), double quantization by default"
    formats = ("bitsandbytes",)
    options = BnB4BitParams


class FP4(MethodSpec):
    """bitsandbytes 4-bit float, quantized as the weights load."""

    name = "fp4"
    summary = "bitsandbytes FP4, double quantization by default"
    formats = ("bitsandbytes",)
    options = BnB4BitParams


@dataclass(frozen=True)
class Int8Params(Params):
    threshold: float = knob(6.0, low=0.0, high=1000.0,
                            help="activation magnitude above which a feature is an outlier kept in fp16")


class Int8(MethodSpec):
    """LLM.int8(): 8-bit weights with outlier features kept in fp16."""

    name = "int8"
    summary = "bitsandbytes LLM.int8() with outlier decomposition"
    formats = ("bitsandbytes",)
    options = Int8Params


# llama.cpp's k-quants pack 256 weights of a row into one super-block: a row
# (a weight's input features) that is not a multiple of 256 cannot be one, and
# llama.cpp writes that tensor in a fallback type (Q4_K → Q5_0, Q5_K → Q5_1,
# Q6_K → Q8_0; llama-quant.cpp). The job records which tensors did.
K_QUANT_ROW = 256
K_QUANTS = ("q4_k_m", "q5_k_m", "q6_k")


@dataclass(frozen=True)
class GGUFParams(Params):
    imatrix: bool = knob(True, help="weigh the k-quants' rounding by an importance matrix computed on the calibration text "
                                    "(k-quant formats only)")


class GGUF(MethodSpec):
    """GGUF files for llama.cpp, Ollama and LM Studio: llama.cpp's k-quants
    (Q4_K_M, Q5_K_M, Q6_K, with the importance matrix llama-imatrix would
    compute), Q8_0 or F16. `--format` takes several, comma-separated: one
    job writes one .gguf file per format into its artifact, each measured.
    The code is worker/methods/gguf.py (why these producers: its docstring)."""

    name = "gguf"
    summary = "GGUF for llama.cpp/Ollama: q4_k_m by default, several formats a job (--format q4_k_m,q8_0)"
    formats = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16")
    calibrated = True
    options = GGUFParams
    architectures = GGUF_ARCHITECTURES

    @classmethod
    def parse_format(cls, fmt: str | None) -> str:
        """One format or several, comma-separated, in the order given (the
        first is the job's headline figures)."""
        names = [f.strip().lower() for f in (fmt or cls.formats[0]).split(",") if f.strip()]
        unknown = [f for f in names if f not in cls.formats]
        if not names or unknown:
            raise SpecError(f"--method gguf writes {'/'.join(cls.formats)} (one or several, comma-separated), "
                            f"not --format {', '.join(unknown) or repr(fmt)}")
        if len(set(names)) != len(names):
            raise SpecError(f"--format names a GGUF format twice: {fmt}")
        return ",".join(names)

    @classmethod
    def needs_calibration(cls, params: Params, fmt: str) -> bool:
        # The importance matrix is the only use of calibration text, and only
        # the k-quants take one (llama.cpp's Q8_0 and F16 ignore it).
        return bool(getattr(params, "imatrix", False)) and any(f in K_QUANTS for f in fmt.split(","))

    @classmethod
    def check_model(cls, info: CheckpointInfo, params: Params, fmt: str) -> None:
        archs = info.config.get("architectures") or []
        arch = archs[0] if archs and isinstance(archs[0], str) else None
        if arch in NEEDS_NEWER_GGUF:
            raise SpecError(f"llama.cpp's GGUF converter for {arch}, as AutoRound 0.15.1 vendors it, needs a gguf "
                            f"library newer than {GGUF_LIBRARY} (the newest on PyPI): it cannot write this model here")
        if arch not in GGUF_ARCHITECTURES:
            raise SpecError(f"llama.cpp's GGUF converter does not know the architecture {arch or info.model_type!r} "
                            f"(config.json architectures); `qfarm methods gguf` lists the {len(GGUF_ARCHITECTURES)} it does")


# The catalog (api_client/contract/catalog/__init__.py) registers these, and only these.
METHODS: tuple[type[MethodSpec], ...] = (GPTQ, AWQ, RTN, FP8, NF4, FP4, Int8, GGUF)
