"""Order statistics of the benchmark."""

from __future__ import annotations

import math

import pytest

from bench.stats import percentile, summarize


def test_percentile_matches_linear_interpolation() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 95) == pytest.approx(4.8)
    assert percentile([1.0, 2.0], 50) == pytest.approx(1.5)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.5], 95) == 7.5


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_rejects_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], q)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summarize_reports_every_statistic() -> None:
    summary = summarize([1.0, 2.0, 3.0, 10.0])
    assert summary == {
        "n": 4,
        "p50": 2.5,
        "p95": pytest.approx(8.95),
        "min": 1.0,
        "max": 10.0,
        "mean": 4.0,
    }


def test_summarize_drops_non_finite_and_empty_is_none() -> None:
    assert summarize([]) is None
    assert summarize([math.nan, math.inf]) is None
    summary = summarize([math.nan, 2.0])
    assert summary is not None
    assert summary["n"] == 1
    assert summary["p50"] == 2.0
