"""The uncertainty of the accuracy figures (api_client/contract/stats.py), checked
against what it estimates: the spread of the figure over resampled items."""

import math
import random

import pytest

from api_client.contract import stats


def answers(n, p, rng):
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def test_a_scores_standard_error_is_lm_evals():
    from lm_eval.api.metrics import mean_stderr

    items = answers(300, 0.56, random.Random(1))
    assert stats.mean_stderr(items) == pytest.approx(mean_stderr(items))
    # The figure: 300 items near 0.56 give about 0.029.
    assert 0.025 < stats.mean_stderr(items) < 0.032


def test_the_paired_recovery_error_is_the_spread_over_resampled_items():
    """Two models that mostly agree item by item (a quantized model keeps
    most of its original's answers): the paired standard error of the
    recovery matches the standard deviation of the recovery over bootstrap
    resamples of the items, and is far below the unpaired one."""
    rng = random.Random(7)
    base = answers(400, 0.56, rng)
    # 95 % of items answered as the original did, the rest at random.
    quant = [b if rng.random() < 0.95 else float(rng.random() < 0.56) for b in base]
    ratio, se = stats.paired_ratio(base, quant)
    assert ratio == pytest.approx(stats.mean(quant) / stats.mean(base))

    draws = []
    for _ in range(2000):
        idx = [rng.randrange(len(base)) for _ in base]
        draws.append(sum(quant[i] for i in idx) / sum(base[i] for i in idx))
    spread = math.sqrt(sum((d - stats.mean(draws)) ** 2 for d in draws) / (len(draws) - 1))
    assert se == pytest.approx(spread, rel=0.15)

    unpaired = stats.unpaired_ratio_stderr(stats.mean(base), stats.mean_stderr(base), stats.mean(quant),
                                           stats.mean_stderr(quant))
    assert unpaired > 3 * se


def test_the_ratio_interval_covers_what_resampling_the_windows_gives():
    rng = random.Random(3)
    tokens = 511
    base = [tokens * (3.0 + rng.gauss(0, 0.3)) for _ in range(40)]
    quant = [b + tokens * (0.01 + rng.gauss(0, 0.004)) for b in base]
    low, high = stats.paired_ppl_ratio_interval(base, quant, tokens)
    ratio = math.exp((sum(quant) - sum(base)) / (40 * tokens))
    assert low < ratio < high
    # The windows' shared difficulty cancels: the interval is the
    # per-window difference's (sd 0.004 over √40), not the losses' (0.3).
    assert high - low == pytest.approx(2 * 1.96 * 0.004 / math.sqrt(40), rel=0.35)
    assert stats.paired_ppl_ratio_interval(base[:1], quant[:1], tokens) is None  # one window: no interval
    assert stats.paired_ppl_ratio_interval(base, quant, tokens) == (low, high)  # seeded


def test_item_scores_keep_their_order_and_values():
    assert stats.encode_scores([1.0, 0.0, 1.0]) == "101"
    assert stats.decode_scores("101") == [1.0, 0.0, 1.0]
    assert stats.decode_scores(stats.encode_scores([0.25, 1.0])) == [0.25, 1.0]
