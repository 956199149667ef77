"""What every quantization method is: its name, its knobs, its formats and the
code that runs it.

A method module is imported by the client to validate a submission, so it must
stay light: heavy libraries (torch, llm-compressor, GPTQModel, bitsandbytes)
are imported inside `quantize`, on the worker only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from api_client.errors import SpecError

if TYPE_CHECKING:
    from worker.context import JobContext


def knob(default: Any, *, choices: tuple | None = None, low: float | None = None,
         high: float | None = None, help: str = "", off: str | None = None) -> Any:
    """A method parameter: its default and the values a user may give it.
    `off` names the negative flag of a boolean (default: --no-NAME)."""
    return dataclasses.field(default=default, metadata={"choices": choices, "low": low, "high": high,
                                                        "help": help, "off": off})


def cli_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def cli_flags(f: dataclasses.Field) -> str:
    """How the CLI spells a knob: `--bits`, or `--act-order/--no-act-order`."""
    name = cli_name(f.name)
    if isinstance(f.default, bool):
        return f"{name}/{f.metadata.get('off') or '--no-' + name[2:]}"
    return name


@dataclass(frozen=True)
class Params:
    """Base of each method's typed parameters. Subclasses declare `knob`s."""

    @classmethod
    def knobs(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def parse(cls, method: str, raw: dict[str, Any]) -> "Params":
        """Build validated parameters from what the user set (None = not set)."""
        given = {k: v for k, v in raw.items() if v is not None}
        names = {f.name for f in cls.knobs()}
        for key in given:
            if key not in names:
                takes = ", ".join(cli_name(n) for n in sorted(names)) or "no options"
                raise SpecError(f"{cli_name(key)} does not apply to --method {method} (it takes {takes})")
        values = {}
        for f in cls.knobs():
            value = given.get(f.name, f.default)
            values[f.name] = _check(method, f, value)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(method: str, f: dataclasses.Field, value: Any) -> Any:
    meta = f.metadata
    kind = type(f.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{cli_name(f.name)} must be true or false for {method}, not {value!r}")
    elif kind in (int, float):
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise SpecError(f"{cli_name(f.name)} must be a number, not {value!r}") from None
    if meta.get("choices") is not None and value not in meta["choices"]:
        allowed = "/".join(str(c) for c in meta["choices"])
        raise SpecError(f"{method} does not support {cli_name(f.name)} {value} (supported: {allowed})")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and not value > low or high is not None and not value < high:
        raise SpecError(f"{cli_name(f.name)} for {method} must lie strictly between {low} and {high}, not {value}")
    return value


@dataclass(frozen=True)
class NoParams(Params):
    pass


class Method:
    """A quantization method behind the registry.

    `formats` lists the artifact formats the method can write; the first is
    the default. `calibrated` says whether it needs calibration text.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    formats: ClassVar[tuple[str, ...]]
    calibrated: ClassVar[bool] = False
    Params: ClassVar[type[Params]] = NoParams
    # Compute capability a GPU needs to run this method (None: any GPU or CPU).
    min_capability: ClassVar[tuple[int, int] | None] = None

    @classmethod
    def parse_params(cls, raw: dict[str, Any], fmt: str) -> Params:
        params = cls.Params.parse(cls.name, raw)
        cls.check_format(params, fmt)
        return params

    @classmethod
    def check_format(cls, params: Params, fmt: str) -> None:
        """Reject parameter values the chosen format cannot hold."""

    @classmethod
    def group_size(cls, params: Params) -> int | None:
        """Group size the artifact will use, for the checkpoint divisibility check."""
        size = getattr(params, "group_size", None)
        return size if size and size > 0 else None

    def quantize(self, ctx: "JobContext", params: Params, fmt: str) -> None:
        """Quantize ctx.model_dir into ctx.output_dir (worker side)."""
        raise NotImplementedError
