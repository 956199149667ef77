"""How a figure is written, wherever qfarm shows one: the CLI's tables,
the compare table's notes, a model card. Sizes in binary units, durations
in minutes and hours, shares in per cent, and a measured figure with the
half-width of its 95 % interval (contract/stats.py computes the interval)."""

from __future__ import annotations

from api_client.contract.stats import Z95


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def duration(seconds: float | None) -> str:
    """1283.4 → '21 min 23 s'; 49.2 → '49.2 s'; 7300 → '2 h 1 min'."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def num(x: float | None, fmt: str = ".4g") -> str:
    return "-" if x is None else format(x, fmt)


def fraction(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f} %"


def half_width(se: float | None) -> float | None:
    """The ± qfarm prints beside a figure: its 95 % interval's half-width."""
    return None if se is None else Z95 * se


def score_text(score: float, se: float | None) -> str:
    return f"{score:.4f}" + ("" if se is None else f" ± {half_width(se):.4f}")


def recovery_text(recovery: float | None, se: float | None) -> str:
    """'98.8 % ± 4.1' (± the 95 % half-width), '-' where not measured."""
    if recovery is None:
        return "-"
    width = half_width(se)
    return f"{recovery * 100:.1f} %" + ("" if width is None else f" ± {width * 100:.1f}")
