"""The generated short answers: training data of the default model and ``rewardrt eval``'s probes."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from conftest import assert_one_line_error

from rewardrt.models import shortanswers as sa


def test_number_words():
    assert sa.number_words(72) == "seventy-two"
    assert sa.number_words(1205) == "one thousand two hundred five"
    assert sa.number_words(-15) == "minus fifteen"
    assert sa.number_words(3_000_000) == "three million"


def test_groups_are_seeded_and_every_kind_is_there():
    a = sa.groups(sa.TRAIN, 5, seed=3)
    assert a == sa.groups(sa.TRAIN, 5, seed=3) and a != sa.groups(sa.TRAIN, 5, seed=4)
    assert [g.kind for g in a] == [k for k in sa.KINDS for _ in range(5)]
    for g in a:
        assert g.reference.strip() and g.positives and g.negatives
        assert not set(g.positives) & set(g.negatives)


def test_probe_templates_are_disjoint_from_training_templates():
    for f in fields(sa.Templates):
        train, probe = getattr(sa.TRAIN, f.name), getattr(sa.PROBE, f.name)
        if isinstance(train, tuple):
            assert not set(train) & set(probe), f.name
    # and the probes ask about other entities than training used
    for category in sa._ENTITIES:
        train = {name for name, _ in sa._entity_pool(sa.TRAIN, category)}
        probe = {name for name, _ in sa._entity_pool(sa.PROBE, category)}
        assert train and probe and not train & probe


def test_worked_solutions_mention_the_other_answer_along_the_way():
    """The hard case for a lexical reward: wrong solutions carry the right number in a step."""
    gs = sa.groups(sa.TRAIN, 200, seed=1, kinds=("worked",))
    mentions = sum(any(f" {g.reference}." in n or f" {g.reference} " in n for n in g.negatives) for g in gs)
    assert mentions > 100
    for g in gs:
        for p in g.positives:  # the final answer is the reference
            assert p.rstrip(".}$").endswith(g.reference) or g.reference not in "0123456789"


def test_near_miss_numbers_differ_from_the_answer():
    import random

    rng = random.Random(0)
    for n in (0, 7, 72, 1000, -15, 12345):
        near = sa._near_ints(n, rng)
        assert n not in near and near


def test_evaluate_groups_metrics():
    g = sa.Group("number", "72", positives=("72", "seventy-two"), negatives=("73", ""))
    table = {"72": 0.9, "seventy-two": 0.6, "73": 0.7, "": 0.1}
    out = sa.evaluate_groups([g], lambda refs, resps: [table[r] for r in resps])
    # pairs (pos, neg): 0.9>0.7, 0.9>0.1, 0.6<0.7, 0.6>0.1 -> 3/4
    assert out["number"]["pairwise"] == pytest.approx(0.75)
    assert out["number"]["same>=0.5"] == 1.0 and out["number"]["different<0.5"] == 0.5
    assert out["number"]["exact"] == pytest.approx(0.9) and out["all"] == out["number"]
    assert out["number"]["empty<0.5"] == 1.0  # "" scores 0.1 against "72"
    table[""] = 0.5
    assert sa.evaluate_groups([g], lambda refs, resps: [table[r] for r in resps])["number"]["empty<0.5"] == 0.0


def test_training_examples_hold_exact_matches_and_empty_responses():
    rows = sa.training_examples(20, seed=0)
    assert any(a == b and t == 1.0 for a, b, t in rows)
    assert any(not b.strip() and t == 0.0 for _, b, t in rows)
    assert {t for _, _, t in rows} == {0.0, 1.0}


def test_eval_prints_the_short_answer_table_torch_free(tiny_int8, capsys, tmp_path):
    from rewardrt.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_int8[0]), "--no-baselines", "--probe-groups", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Short answers: 24 generated probe groups" in text
    for kind in sa.KINDS:
        assert f"**{kind}** (n=3)" in text
    report = json.loads(out.read_text())
    assert set(report["short_answers"]["int8 (rewardrt)"]) == {*sa.KINDS, "all"}


@pytest.mark.parametrize("argv, match", [
    (["--probe-groups", "0"], "argument --probe-groups: must be an integer >= 1, got '0'"),
    (["nowhere.onnx"], "does not exist"),
])
def test_eval_bad_arguments(argv, match, cli):
    assert_one_line_error(*cli(["eval", *argv])[::2], match)


def test_eval_reports_int8_fidelity_against_its_fp32_model(tiny_int8, tiny_checkpoint, capsys, tmp_path):
    from rewardrt.cli import main

    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"a": f"ref {i}", "b": f"resp {i % 3}", "source": "s",
                                        "similarity": (i % 5) / 4}) + "\n" for i in range(20)))
    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_int8[0]), str(rows), "--no-baselines", "--probe-groups", "2",
                 "--torch-checkpoint", str(tiny_checkpoint), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Fidelity of int8 (rewardrt) against fp32 (torch)" in text
    fid = json.loads(out.read_text())["fidelity"]
    assert fid["labelled pairs"]["n"] == 20 and fid["short-answer probes"]["n"] > 16
    assert fid["short-answer probes"]["mean_abs_diff"] < 0.05  # the tiny model's INT8 export is close


def test_every_number_form_is_the_same_number():
    """Scientific and separated forms are exact (no rounded mantissa such as 3.3221e9 for 3322099000)."""
    import random
    import re

    rng = random.Random(5)
    for n in [3322099000, 72000, 1000, -4500, 1234567, *(rng.randint(1000, 5 * 10**9) for _ in range(500))]:
        for form in sa._int_forms(n, rng):
            m = re.fullmatch(r"(-?[\d.]+)(?:e| x 10\^| × 10\^)(\d+)", form)
            if m:
                mantissa, exp = m.groups()
                whole, _, frac = mantissa.lstrip("-").partition(".")
                assert int(whole + frac) * 10 ** (int(exp) - len(frac)) == abs(n), form
            elif re.fullmatch(r"-?[\d,]+(\.0+)?", form):
                assert float(form.replace(",", "")) == n, form
