"""The method catalog: what `--method NAME` means, for the client and the
worker alike — its formats, its typed options, whether it calibrates, the
hardware it needs. No quantization code lives here (that is worker/methods/,
one implementation per catalog entry), so a laptop validates a submission
without torch.

A method is a `MethodSpec` subclass registered with `@register`
(methods.py); the worker registers its implementation under the same name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from api_client.catalog.options import NoParams, Params
from api_client.errors import SpecError

if TYPE_CHECKING:
    from api_client.checkpoint import CheckpointInfo


class MethodSpec:
    """A quantization method as a user sees it.

    `formats` lists the artifact formats the method can write; the first is
    the default. `calibrated` says whether it needs calibration text.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    calibrated: ClassVar[bool] = False
    options: ClassVar[type[Params]] = NoParams
    # Compute capability a GPU needs to run this method (None: any GPU or CPU);
    # such jobs go to a queue only those GPUs' workers consume (api_client/routing.py).
    min_capability: ClassVar[tuple[int, int] | None] = None
    # The config.json architectures the method takes (None: any it can load).
    architectures: ClassVar[frozenset[str] | None] = None

    @classmethod
    def parse_format(cls, fmt: str | None) -> str:
        """The format a job writes: `fmt` checked, or the default (the first)."""
        fmt = fmt or cls.formats[0]
        if fmt not in cls.formats:
            raise SpecError(f"--method {cls.name} writes {'/'.join(cls.formats)}, not --format {fmt}")
        return fmt

    @classmethod
    def parse_params(cls, raw: dict[str, Any], fmt: str) -> Params:
        params = cls.options.parse(cls.name, raw)
        cls.check_format(params, fmt)
        return params

    @classmethod
    def check_format(cls, params: Any, fmt: str) -> None:
        """Reject parameter values the chosen format cannot hold."""

    @classmethod
    def needs_calibration(cls, params: Params, fmt: str) -> bool:
        """Whether this job reads calibration text (a method may need it for
        some formats or options only)."""
        return cls.calibrated

    @classmethod
    def check_model(cls, info: CheckpointInfo, params: Params, fmt: str) -> None:
        """Refuse a checkpoint this method cannot take (beyond what every
        method checks), in one line."""

    @classmethod
    def group_size(cls, params: Params) -> int | None:
        """Group size the artifact will use, for the checkpoint divisibility check."""
        size = getattr(params, "group_size", None)
        return size if isinstance(size, int) and size > 0 else None


_REGISTRY: dict[str, type[MethodSpec]] = {}


def register(cls: type[MethodSpec]) -> type[MethodSpec]:
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method {cls.name} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[MethodSpec]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpecError(f"unknown method {name!r} (choose from {', '.join(names())})") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def capabilities() -> list[tuple[int, int]]:
    """The GPU generations some method needs (FP8: 8.9)."""
    return sorted({c for c in (m.min_capability for m in _REGISTRY.values()) if c is not None})


def label_of(method: str, fmt: str | None) -> str:
    """`gptq` for GPTQ's default format, `gptq:gptq` for another (as
    `qfarm compare --methods` spells them)."""
    return method if fmt in (None, get(method).formats[0]) else f"{method}:{fmt}"


# Importing the declarations registers them.
from api_client.catalog import methods  # noqa: E402,F401

__all__ = ["MethodSpec", "Params", "register", "get", "names", "capabilities"]
