"""The base of every catalog entry, apart from the registry (__init__.py) so
that methods.py can subclass it and __init__.py can import methods.py's table
without either importing the other half-initialised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from api_client.contract.catalog.options import NoParams, Params
from api_client.errors import SpecError

if TYPE_CHECKING:
    from api_client.contract.checkpoint import CheckpointInfo


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
    # such jobs go to a queue only those GPUs' workers consume (api_client/contract/routing.py).
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
