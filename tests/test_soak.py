"""A short soak (bench/stress/soak.py): thousands of scores in one process without descriptor or memory
growth, and the same bits for a probe set at the end as after warm-up."""

from __future__ import annotations

import pytest

pytest.importorskip("psutil")


def test_short_soak(tiny_int8):
    from rewardrt.bench.stress.soak import run_soak

    result = run_soak(tiny_int8[0], n=2000, warmup=300, max_batch=32, threads=1, max_growth=25.0)
    print(result.summary())
    assert result.scores == 2000 and result.bad_scores == 0
    assert result.fds_end <= result.fds_start
    assert result.growth < 25.0  # generous: the bench script holds the 100k-score run to 10%
    assert result.probe_identical and result.ok
