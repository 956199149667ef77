"""The uncertainty of qfarm's accuracy figures, in one place: the standard
error of a task score, of the recovery (quantized / original score) and of
their mean over tasks, and when two figures are within noise of each other.

Pure Python (the client has no numpy): the worker computes the figures with
these functions and `compare` recomputes a recovery against its group's one
baseline with the same ones.

A task score is the mean of per-item scores (0/1 for accuracy), so its
standard error is lm-eval's `mean_stderr`: the sample standard deviation over
√n. A recovery R = mean(q) / mean(b) where both models answered the same
items is paired: by the delta method its variance is var(qᵢ − R·bᵢ) / (n·b̄²),
which cancels the item difficulty both models share (an item one model gets
right the other mostly does too). Where the items cannot be paired, the
relative errors add in quadrature: (se_R / R)² = (se_q / q̄)² + (se_b / b̄)².
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

# Two-sided 95 %: the intervals qfarm prints and compares are ± Z95 · se.
Z95 = 1.959963984540054


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean of `values` (lm-eval's mean_stderr), or
    None for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1) / n)


def paired_ratio(baseline: Sequence[float], quantized: Sequence[float]) -> tuple[float, float] | None:
    """(R, se of R) for R = mean(quantized) / mean(baseline) over the same
    items in the same order; None where the baseline scores 0 or there are
    fewer than two items."""
    n = len(baseline)
    if n != len(quantized):
        raise ValueError(f"paired scores need the same items: {n} against {len(quantized)}")
    if n < 2:
        return None
    b, q = mean(baseline), mean(quantized)
    if b == 0:
        return None
    ratio = q / b
    residuals = [qi - ratio * bi for bi, qi in zip(baseline, quantized, strict=True)]
    se = mean_stderr(residuals)
    return ratio, (se or 0.0) / b


def unpaired_ratio_stderr(baseline: float, baseline_se: float | None, quantized: float,
                          quantized_se: float | None) -> float | None:
    """se of quantized / baseline from each score's own se (independent
    samples), or None where either is unknown or the baseline is 0."""
    if baseline_se is None or quantized_se is None or baseline == 0:
        return None
    ratio = quantized / baseline
    if quantized == 0:
        return quantized_se / baseline
    return abs(ratio) * math.sqrt((quantized_se / quantized) ** 2 + (baseline_se / baseline) ** 2)


def mean_of(estimates: Sequence[tuple[float, float | None]]) -> tuple[float, float | None]:
    """The mean of independent estimates (value, se) and its se (None if any
    se is unknown): the job's task recovery over its tasks."""
    k = len(estimates)
    value = sum(v for v, _ in estimates) / k
    ses = [s for _, s in estimates]
    if any(s is None for s in ses):
        return value, None
    return value, math.sqrt(sum(s * s for s in ses if s is not None)) / k


def recovery(baseline: float, baseline_se: float | None, baseline_items: Sequence[float] | None,
             quantized: float, quantized_se: float | None, quantized_items: Sequence[float] | None) -> dict[str, Any]:
    """A task's recovery (quantized / original score; 1.0: all kept) and its
    standard error: paired where both models' item scores are at hand for
    the same items, else from the two scores' own errors."""
    if not baseline:
        return {"recovery": None, "recovery_stderr": None}
    if baseline_items and quantized_items and len(baseline_items) == len(quantized_items):
        paired = paired_ratio(baseline_items, quantized_items)
        if paired is not None:
            return {"recovery": quantized / baseline, "recovery_stderr": paired[1], "recovery_paired": True}
    return {"recovery": quantized / baseline,
            "recovery_stderr": unpaired_ratio_stderr(baseline, baseline_se, quantized, quantized_se),
            "recovery_paired": False}


def interval(value: float, se: float | None) -> tuple[float, float]:
    """The 95 % interval of a figure with standard error `se` (a point
    where it has none)."""
    half = Z95 * se if se is not None else 0.0
    return value - half, value + half


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals share a point: the figures are within noise."""
    return a[0] <= b[1] and b[0] <= a[1]


def encode_scores(values: Sequence[float]) -> str | list[float]:
    """Per-item scores as a job's metrics keep them: a string of 0s and 1s
    where every score is 0 or 1 (accuracy: 500 items in 500 bytes), else the
    numbers rounded to 6 digits."""
    if all(v in (0, 1) for v in values):
        return "".join("1" if v else "0" for v in values)
    return [round(float(v), 6) for v in values]


def decode_scores(stored: str | Sequence[float] | None) -> list[float] | None:
    if stored is None:
        return None
    if isinstance(stored, str):
        return [1.0 if c == "1" else 0.0 for c in stored]
    return [float(v) for v in stored]


def bootstrap_interval(statistic: Callable[[Sequence[int]], float], n: int, iters: int = 2000,
                       seed: int = 0) -> tuple[float, float] | None:
    """The 95 % percentile bootstrap interval of `statistic` over `n` units
    (windows of a text) drawn with replacement, or None for fewer than two.
    `statistic` takes the drawn unit indices; a paired statistic reads both
    models' figures of the same units. Seeded: the same figures give the same
    interval."""
    import random

    if n < 2:
        return None
    rng = random.Random(seed)
    draws = sorted(statistic([rng.randrange(n) for _ in range(n)]) for _ in range(iters))
    return draws[int(0.025 * (iters - 1))], draws[round(0.975 * (iters - 1))]


def paired_ppl_ratio_interval(baseline_nll: Sequence[float], quantized_nll: Sequence[float],
                              tokens_per_window: int, iters: int = 2000) -> tuple[float, float] | None:
    """95 % interval of the perplexity ratio, bootstrapped over windows with
    both models' losses of a drawn window kept together: the ratio of a
    resample is exp((Σ nll_q − Σ nll_b) / tokens) over the drawn windows."""
    if len(baseline_nll) != len(quantized_nll):
        raise ValueError("the two models' windows differ")
    diff = [q - b for b, q in zip(baseline_nll, quantized_nll, strict=True)]
    return bootstrap_interval(lambda idx: math.exp(sum(diff[i] for i in idx) / (len(idx) * tokens_per_window)),
                              len(diff), iters)
