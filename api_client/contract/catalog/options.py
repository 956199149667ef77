"""A method's options: typed dataclass fields (`knob`s) that drive both the
validation of a submission and the `qfarm submit` flags (api_client/cli/commands.py
generates its options from them), so an option is defined once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from api_client.errors import SpecError


def knob(default: Any, *, choices: tuple[Any, ...] | None = None, low: float | None = None,
         high: float | None = None, help: str = "", off: str | None = None) -> Any:
    """A method parameter: its default and the values a user may give it.
    `off` names the negative flag of a boolean (default: --no-NAME)."""
    return dataclasses.field(default=default, metadata={"choices": choices, "low": low, "high": high,
                                                        "help": help, "off": off})


def cli_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def off_flag(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("off") or "--no-" + cli_name(f.name)[2:])


def cli_flags(f: dataclasses.Field[Any]) -> str:
    """How the CLI spells a knob: `--bits`, or `--act-order/--no-act-order`."""
    name = cli_name(f.name)
    return f"{name}/{off_flag(f)}" if isinstance(f.default, bool) else name


@dataclass(frozen=True)
class Params:
    """Base of each method's typed parameters. Subclasses declare `knob`s."""

    @classmethod
    def knobs(cls) -> tuple[dataclasses.Field[Any], ...]:
        return dataclasses.fields(cls)

    @classmethod
    def parse(cls, method: str, raw: dict[str, Any]) -> Params:
        """Build validated parameters from what the user set (None = not set)."""
        given = {k: v for k, v in raw.items() if v is not None}
        names = {f.name for f in cls.knobs()}
        for key in given:
            if key not in names:
                takes = ", ".join(cli_name(n) for n in sorted(names)) or "no options"
                raise SpecError(f"{cli_name(key)} does not apply to --method {method} (it takes {takes})")
        values = {f.name: check(method, f, given.get(f.name, f.default)) for f in cls.knobs()}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check(method: str, f: dataclasses.Field[Any], value: Any) -> Any:
    meta = f.metadata
    kind: Any = type(f.default)
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
    if (low is not None and not value > low) or (high is not None and not value < high):
        raise SpecError(f"{cli_name(f.name)} for {method} must lie strictly between {low} and {high}, not {value}")
    return value


@dataclass(frozen=True)
class NoParams(Params):
    pass
