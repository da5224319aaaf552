"""Determinism and thread safety: a pair's score is bit-identical (==) whatever the batch it shares,
the batch size, the input order, the number of intra-op threads, and whether 8 threads call one
model at once."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from rewardrt import RewardModel
from rewardrt.runtime.scorer import MAX_ATTENTION_CELLS, WIDTH_LADDER, padded_width


@pytest.fixture(scope="module")
def pairs(dev_pairs):
    refs, resps = list(dev_pairs[0][:150]), list(dev_pairs[1][:150])
    # every width bucket up to the 512-token limit, and a few duplicates
    for words in (1, 30, 70, 130, 200, 260, 380, 600):
        refs.append("short reference")
        resps.append(" ".join(["long"] * words))
    refs += refs[:3]
    resps += resps[:3]
    return resps, refs


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request, tiny_fp32, tiny_int8) -> RewardModel:
    path = {"fp32": tiny_fp32, "int8": tiny_int8}[request.param][0]
    return RewardModel(path, threads=2)


def test_padded_width_depends_on_own_length_only():
    assert [padded_width(n, 512) for n in (3, 16, 17, 128, 129, 257, 512)] == [16, 16, 32, 128, 160, 320, 512]
    assert padded_width(40, 32) == 32  # never beyond the artifact's max_length
    assert padded_width(700, 1024) == 768
    for n in range(1, 513):
        w = padded_width(n, 512)
        assert n <= w <= 512 and (w - n < 16 or (w - n) / n < 0.25)
    assert WIDTH_LADDER[-1][1] == 512


def test_batches_bound_rows_tokens_and_attention(tiny_int8):
    scorer = RewardModel(tiny_int8[0], threads=1)._scorer
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(3, scorer.spec.max_length + 1, size=500), np.full(200, 10)])
    plan = scorer.batches(lengths, batch_size=64)
    seen = np.concatenate([rows for _, rows in plan])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every row exactly once
    for width, rows in plan:
        ladder = {padded_width(int(n), scorer.spec.max_length) for n in lengths[rows]}
        assert len(ladder) == 1  # one padded width per batch: it bounds the padding
        # a row's score does not depend on its padded width: each batch is padded to its longest row
        assert width == lengths[rows].max()
        assert len(rows) <= 64
        assert len(rows) == 1 or (len(rows) * width <= scorer.max_batch_tokens
                                  and len(rows) * width ** 2 <= MAX_ATTENTION_CELLS)
    by_width = {w: max(len(r) for ww, r in plan if ww == w) for w, _ in plan}
    if 512 in by_width:
        assert by_width[512] == 1  # a 512-token row's attention alone fills the budget
    assert by_width[10] == 64  # short rows still fill the batch
    padded = sum(len(r) * w for w, r in plan)
    ladder = sum(padded_width(int(n), scorer.spec.max_length) for n in lengths)
    assert padded < ladder


def test_the_scorer_treats_every_artifact_as_single_row_safe(tiny_int8, pairs):
    """Every artifact since v1 of the default model records single_row_safe=True; the scorer no longer
    reads the field (it stays in the spec, the wire format): an artifact saying False is scored the
    same way, bit for bit, a lone pair at its own length without a copy beside it."""
    import dataclasses

    model = RewardModel(tiny_int8[0], threads=1)
    resps, refs = pairs
    expected = model.batch_score(resps[:40], refs[:40])
    model._scorer.spec = dataclasses.replace(model._scorer.spec, single_row_safe=False)
    assert model.batch_score(resps[:40], refs[:40]) == expected
    assert [model.score(a, b) for a, b in zip(resps[:5], refs[:5])] == expected[:5]
    plan = model._scorer.batches(np.array([7, 30, 31]), batch_size=64)
    assert [(w, r.tolist()) for w, r in plan] == [(7, [0]), (31, [1, 2])]


def test_bit_identical_across_batches_sizes_and_orders(model, pairs):
    resps, refs = pairs
    alone = [model.score(a, b) for a, b in zip(resps, refs)]
    assert model.batch_score(resps, refs) == alone
    rng = random.Random(0)
    for _ in range(12):
        picked = rng.sample(range(len(resps)), rng.randint(1, len(resps)))
        batch_size = rng.choice([1, 2, 3, 7, 64, 1000])
        got = model.batch_score([resps[i] for i in picked], [refs[i] for i in picked], batch_size=batch_size)
        assert got == [alone[i] for i in picked], f"batch_size={batch_size}"
    raw_alone = [model.raw_scores([a], b)[0] for a, b in zip(resps[:40], refs[:40])]
    assert model.raw_scores(resps[:40][::-1], refs[:40][::-1], batch_size=5) == raw_alone[::-1]


def test_score_does_not_depend_on_padded_width(model, pairs):
    """Why the scorer may pad a batch to its longest row (runtime/scorer.py): extra pad tokens
    leave a row's raw score bit-identical, at one row and in a batch."""
    from rewardrt.runtime.tokenizer import pad

    scorer = model._scorer
    resps, refs = pairs
    ids, _ = scorer.encoder(refs[:40], resps[:40])

    def raw(rows, width):
        input_ids, mask = pad(rows, width=width)
        return scorer.session.run(["raw_score"], {"input_ids": input_ids, "attention_mask": mask})[0]

    for x in ids:
        own = raw([x], len(x))
        for extra in (1, 5, 16, 37):
            if len(x) + extra <= model.spec.max_length:
                assert np.array_equal(raw([x], len(x) + extra), own), (len(x), extra)
    longest = max(len(x) for x in ids[:8])
    batch = raw(ids[:8], longest + 3)
    assert np.array_equal(batch, np.concatenate([raw([x], len(x)) for x in ids[:8]]))


def test_bit_identical_across_thread_counts(tiny_int8, pairs):
    resps, refs = pairs
    one = RewardModel(tiny_int8[0], threads=1).batch_score(resps, refs)
    two = RewardModel(tiny_int8[0], threads=2).batch_score(resps, refs, batch_size=5)
    assert one == two


def test_eight_threads_share_one_model(model, pairs):
    resps, refs = pairs
    expected = model.batch_score(resps, refs)
    errors: list[BaseException] = []
    mismatches: list[int] = []
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait(30)
            for _ in range(15):
                picked = rng.sample(range(len(resps)), rng.randint(1, 24))
                got = model.batch_score([resps[i] for i in picked], [refs[i] for i in picked],
                                        batch_size=rng.choice([1, 4, 64]))
                if got != [expected[i] for i in picked]:
                    mismatches.append(seed)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert mismatches == []


@pytest.mark.slow
def test_default_model_bit_identical(dev_pairs):
    model = RewardModel(threads=2)
    refs, resps = list(dev_pairs[0][:40]), list(dev_pairs[1][:40])
    resps.append("word " * 300)
    refs.append("a reference")
    alone = np.array([model.score(a, b) for a, b in zip(resps, refs)])
    rng = random.Random(1)
    for _ in range(3):
        picked = rng.sample(range(len(resps)), rng.randint(2, len(resps)))
        got = model.batch_score([resps[i] for i in picked], [refs[i] for i in picked],
                                batch_size=rng.choice([2, 7, 64]))
        assert np.array_equal(np.array(got), alone[picked])
