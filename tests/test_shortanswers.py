"""The generated short answers: training data of the default model and ``rewardrt eval``'s probes."""

from __future__ import annotations

import functools
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


def test_a_chain_reaches_its_answer_in_its_last_step():
    """Rollouts compute the answer in the last step ("12 * 6 = 72. The answer is 72."): a chain's
    positives end on the reference in their last step; its negatives miscalculate the last step,
    state another answer, or carry the right number one step further."""
    import re

    for templates in (sa.TRAIN, sa.PROBE):
        gs = [g for g in sa.groups(templates, 40, seed=9) if g.kind == "chain"]
        assert len(gs) == 40
        for g in gs:
            n = int(g.reference)
            for p in g.positives:
                numbers = [int(x) for x in re.findall(r"-?\d+", p)]
                assert numbers[-1] == n and numbers[-2] == n, p  # the last step's result, then the answer
            for x in (x for x in g.negatives if x.strip()):  # (and, for some, an empty response)
                assert int(re.findall(r"-?\d+", x)[-1]) != n, x
            assert any(str(n) in x for x in g.negatives)  # the right number passes through a wrong one
    # training draws chains only when a recipe weighs them: older recipes keep their data
    assert "chain" not in sa.training_kinds(None) and "chain" in sa.training_kinds({"chain": 1})
    rows = sa.training_examples(3, seed=1)
    assert rows == sa.training_examples(3, seed=1, weights={"number": 1})
    assert len(sa.training_examples(3, seed=1, weights={"chain": 1})) > len(rows)


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
    assert out["number"]["exact"] == pytest.approx(0.9)
    assert json.dumps(out["all"]) == json.dumps(out["number"])  # NaN (no hedges) compares equal as text
    assert out["number"]["empty<0.5"] == 1.0  # "" scores 0.1 against "72"
    table[""] = 0.5
    assert sa.evaluate_groups([g], lambda refs, resps: [table[r] for r in resps])["number"]["empty<0.5"] == 0.0


def test_training_examples_hold_exact_matches_and_empty_responses():
    rows = sa.training_examples(20, seed=0)
    assert any(a == b and t == 1.0 for a, b, t in rows)
    assert any(not b.strip() and t == 0.0 for _, b, t in rows)
    assert {t for _, _, t in rows} == {0.0, 1.0}


def test_hedges_and_hard_cases_leave_the_groups_as_they_were():
    """Older recipes and the export's calibration pairs keep their data: the extras come from a
    stream of their own."""
    plain = sa.groups(sa.TRAIN, 30, seed=5)
    hedged = sa.groups(sa.TRAIN, 30, seed=5, hedge_share=1.0)
    assert [(g.kind, g.reference, g.positives, g.negatives) for g in hedged] == \
        [(g.kind, g.reference, g.positives, g.negatives) for g in plain]
    assert all(not g.hedges for g in plain)
    hard = sa.groups(sa.TRAIN, 30, seed=5, hard_share=1.0)
    assert [g.reference for g in hard] == [g.reference for g in plain]
    for h, p in zip(hard, plain):
        assert set(p.positives) <= set(h.positives) and set(p.negatives) - set(h.positives) <= set(h.negatives)
        assert not set(h.positives) & set(h.negatives)


@pytest.mark.parametrize("templates", [sa.TRAIN, sa.PROBE], ids=["train", "probe"])
def test_a_hedge_lists_the_right_answer_among_wrong_ones(templates):
    gs = sa.groups(templates, 40, seed=2, hedge_share=1.0)
    hedged = [g for g in gs if g.hedges]
    assert {g.kind for g in hedged} == set(sa.KINDS) - {"worked", "chain"}
    assert len(hedged) > 0.9 * len([g for g in gs if g.kind not in ("worked", "chain")])
    for g in hedged:
        right, wrong = sa.bare_answers(g, templates)
        (h,) = g.hedges
        assert any(r in h for r in right), (g, h)
        assert any(w in h for w in wrong), (g, h)
        assert h not in g.positives


def test_an_echo_joins_two_right_forms_and_leaves_the_hedges_alone():
    hedged = sa.groups(sa.TRAIN, 30, seed=4, hedge_share=0.5)
    both = sa.groups(sa.TRAIN, 30, seed=4, hedge_share=0.5, echo_share=1.0)
    assert [g.hedges for g in both] == [g.hedges for g in hedged]
    echoed = [g for g in both if g.echoes]
    assert len(echoed) > len(both) / 3
    for g in echoed:
        right, wrong = sa.bare_answers(g, sa.TRAIN)
        (e,) = g.echoes
        assert sum(r in e for r in right) >= 2 or any(e.count(r) == 2 for r in right), (g, e)
        assert not any(w in e and not any(w in r for r in right) for w in wrong), (g, e)
    rows = sa.training_examples(10, seed=0, negative=-0.2, echo_share=1.0)
    echoes = {e for g in sa.groups(sa.TRAIN, 10, seed=0, echo_share=1.0) for e in g.echoes}
    assert echoes and {t for _, b, t in rows if b in echoes} == {1.0}


def test_bare_answers_and_unwrap():
    assert sa.unwrap(sa.TRAIN, "The answer is \\boxed{72}.") == "72"
    assert sa.unwrap(sa.TRAIN, "#### 3.5") == "3.5" and sa.unwrap(sa.TRAIN, "3.5") == "3.5"
    assert sa.unwrap(sa.PROBE, "$\\boxed{1/2}$") == "1/2"
    assert sa.bare_answers(sa.Group("yesno", "True", ("T",), ("F",)), sa.TRAIN) == (("True",), ("False",))
    assert sa.bare_answers(sa.Group("yesno", "no", ("No.",), ("Yes.",)), sa.TRAIN) == (("no",), ("yes",))
    assert sa.bare_answers(sa.Group("option", "B) a mammal", ("B",), ("C",)), sa.TRAIN) == (("B",), ("A", "C", "D"))
    assert sa.bare_answers(sa.Group("worked", "72", ("... 72",), ("... 73",)), sa.TRAIN) == ((), ())
    right, wrong = sa.bare_answers(sa.Group("number", "72", ("Final answer: 72",), ("The answer is 73.", " ")),
                                   sa.TRAIN)
    assert right == ("72",) and wrong == ("73",)


def test_hard_cases_per_kind():
    import random

    rng = random.Random(0)
    pos, neg = sa.hard_cases(sa.Group("number", "72", ("72",), ("73",)), sa.TRAIN, rng)
    assert any("seventy-two" in p for p in pos)
    assert len(neg) == 2 and all(any(w in x for w in ("seventy-", "sixty-", "eighty-", "seven hundred", "twenty-seven", "minus"))
                                 for x in neg)
    _, neg = sa.hard_cases(sa.Group("fraction", "1/2", ("0.5",), ("1/3",)), sa.TRAIN, rng)
    assert {sa.unwrap(sa.TRAIN, x) for x in neg} == {"5", "0.05"}
    pos, neg = sa.hard_cases(sa.Group("option", "(C)", ("C",), ("A",)), sa.TRAIN, rng)
    assert pos[0].startswith("C) ") and neg[0][:3] in {"A) ", "B) ", "D) "}
    assert sa.hard_cases(sa.Group("option", "C) gravity", ("C",), ("A",)), sa.TRAIN, rng) == ((), ())
    assert sa.hard_cases(sa.Group("date", "1999", ("1999",), ("2000",)), sa.TRAIN, rng) == ((), ())


@pytest.mark.parametrize("share", [-0.1, 1.5, True, "0.5"])
@pytest.mark.parametrize("name", ["hedge_share", "hard_share", "echo_share", "decoy_share"])
def test_extra_shares_are_checked(name, share):
    with pytest.raises(ValueError, match=f"{name} must be in"):
        sa.groups(sa.TRAIN, 1, seed=0, **{name: share})


def test_evaluate_groups_reports_hedges_and_training_pays_them_nothing():
    g = sa.Group("number", "72", ("72",), ("73",), hedges=("72 or 73", "71, 72 or 73"))
    table = {"72": 0.9, "73": 0.1, "72 or 73": 0.3, "71, 72 or 73": 0.6, "": 0.0}
    out = sa.evaluate_groups([g], lambda refs, resps: [table[r] for r in resps])
    assert out["number"]["hedged<0.5"] == 0.5 and out["number"]["pairs"] == 6
    plain = sa.evaluate_groups([sa.Group("number", "72", ("72",), ("73",))], lambda refs, resps: [table[r] for r in resps])
    assert plain["number"]["hedged<0.5"] != plain["number"]["hedged<0.5"]  # NaN: no hedges
    rows = sa.training_examples(10, seed=0, negative=-0.2, hedge_share=1.0)
    hedges = {h for g in sa.groups(sa.TRAIN, 10, seed=0, hedge_share=1.0) for h in g.hedges}
    assert hedges and {t for _, b, t in rows if b in hedges} == {-0.2}


def _value(text: str) -> float | None:
    """The number a bare numeric answer states (digits, words, a fraction, a decimal, a percent)."""
    import re

    text = text.strip()
    for m in (re.fullmatch(r"(\d+)/(\d+)", text), re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", text)):
        if m:
            return int(m.group(1)) / int(m.group(2))
    if re.fullmatch(r"-?\d+(\.\d+)?%", text):
        return float(text[:-1]) / 100
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    return _number_words().get(text)


@functools.cache
def _number_words() -> dict[str, int]:
    return {sa.number_words(n): n for n in range(-1000, 10_001)}


@pytest.mark.parametrize("templates", [sa.TRAIN, sa.PROBE], ids=["train", "probe"])
def test_a_decoy_is_a_wrong_value_in_another_form(templates):
    """"seventy-three" against "72", "0.7" against "1/2": another form than the reference's, and
    another value; the other extras and the groups stay as they were."""
    plain = sa.groups(templates, 40, seed=6, hedge_share=1.0, echo_share=0.5)
    gs = sa.groups(templates, 40, seed=6, hedge_share=1.0, echo_share=0.5, decoy_share=1.0)
    assert [(g.reference, g.positives, g.negatives, g.hedges, g.echoes) for g in gs] == \
        [(g.reference, g.positives, g.negatives, g.hedges, g.echoes) for g in plain]
    decoyed = [g for g in gs if g.decoys]
    assert {g.kind for g in decoyed} == {"number", "fraction"}
    assert len(decoyed) > 0.6 * len([g for g in gs if g.kind in ("number", "fraction")])
    checked = 0
    for g in decoyed:
        (d,) = g.decoys
        bare = sa.unwrap(templates, d)
        ref_value, value = _value(g.reference), _value(bare)
        assert d not in g.positives and bare not in sa.bare_answers(g, templates)[0], (g, d)
        if ref_value is not None and value is not None:
            checked += 1
            assert abs(ref_value - value) > 1e-3, (g, d)
            digits = lambda x: any(c.isdigit() for c in x)  # noqa: E731
            if g.kind == "number":  # words against digits, digits against words
                assert digits(g.reference) != digits(bare), (g, d)
            else:  # a decimal or percent against a fraction, a fraction against the rest
                assert ("/" in g.reference or "frac" in g.reference) != ("/" in bare), (g, d)
    assert checked > 0.8 * len(decoyed)
    rows = sa.training_examples(10, seed=0, negative=-0.2, decoy_share=1.0)
    decoys = {(g.reference, d) for g in sa.groups(sa.TRAIN, 10, seed=0, decoy_share=1.0) for d in g.decoys}
    assert decoys and {t for a, b, t in rows if (a, b) in decoys} == {-0.2}


@pytest.mark.parametrize("templates", [sa.TRAIN, sa.PROBE], ids=["train", "probe"])
def test_a_counterpart_is_the_right_value_in_the_decoys_form(templates):
    """"seventy-two" beside the decoy "seventy-three" against "72", "0.5" beside "0.7" against
    "1/2": the reference's value, the decoy's form and wrapper."""
    gs = sa.groups(templates, 40, seed=6, decoy_share=1.0)
    paired = [g for g in gs if g.counterparts]
    assert len(paired) > 0.6 * len([g for g in gs if g.decoys])
    checked = 0
    for g in paired:
        (d,), (c,) = g.decoys, g.counterparts
        bare_d, bare_c = sa.unwrap(templates, d), sa.unwrap(templates, c)
        assert d.replace(bare_d, "\0", 1) == c.replace(bare_c, "\0", 1), (d, c)  # one wrapper
        ref_value, value = _value(g.reference), _value(bare_c)
        if ref_value is not None and value is not None:
            checked += 1
            assert abs(ref_value - value) < 1e-9, (g, c)
            digits = lambda x: any(c.isdigit() for c in x)  # noqa: E731
            slash = lambda x: "/" in x  # noqa: E731
            percent = lambda x: x.endswith("%")  # noqa: E731
            assert (digits(bare_c), slash(bare_c), percent(bare_c)) == \
                (digits(bare_d), slash(bare_d), percent(bare_d)), (d, c)
        assert c not in g.negatives
    assert checked > 0.8 * len(paired)
    off = sa.training_examples(10, seed=0, decoy_share=1.0)
    on = sa.training_examples(10, seed=0, decoy_share=1.0, counterparts=True)
    pairs = [(g.reference, c) for g in sa.groups(sa.TRAIN, 10, seed=0, decoy_share=1.0) for c in g.counterparts]
    assert pairs  # some repeat a positive ("0.5" against "1/2"): counted again, as the decoy is
    assert sorted(on) == sorted(off + [(a, b, 1.0) for a, b in pairs])


def test_more_decoys_per_group_keep_the_first_and_stay_distinct():
    one = sa.groups(sa.TRAIN, 30, seed=8, decoy_share=1.0)
    three = sa.groups(sa.TRAIN, 30, seed=8, decoy_share=1.0, decoys_per_group=3)
    assert [(g.reference, g.positives, g.negatives) for g in one] == \
        [(g.reference, g.positives, g.negatives) for g in three]
    first = next(i for i, g in enumerate(one) if g.decoys)  # the stream is shared up to the first decoy
    assert three[first].decoys[0] == one[first].decoys[0]
    assert sum(len(g.decoys) for g in three) > 2 * sum(len(g.decoys) for g in one)
    for g in three:
        assert len(set(g.decoys)) == len(g.decoys) <= 3 and len(set(g.counterparts)) == len(g.counterparts)
        assert not set(g.decoys) & set(g.positives) and not set(g.counterparts) & set(g.negatives)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="decoys_per_group"):
            sa.groups(sa.TRAIN, 1, seed=0, decoys_per_group=bad)


def test_evaluate_groups_reports_decoys():
    g = sa.Group("fraction", "1/2", ("0.5",), ("1/3",), decoys=("0.7",), counterparts=("Answer: 0.5",))
    table = {"0.5": 0.9, "1/3": 0.1, "0.7": 0.8, "1/2": 1.0, "": 0.0, "Answer: 0.5": 0.4}
    out = sa.evaluate_groups([g], lambda refs, resps: [table[r] for r in resps])
    assert out["fraction"]["decoy<0.5"] == 0.0 and out["fraction"]["pairs"] == 6
    assert out["fraction"]["counterpart>=0.5"] == 0.0 and out["fraction"]["pairwise"] == 1.0
    plain = sa.evaluate_groups([sa.Group("yesno", "yes", ("Yes.",), ("no",))], lambda refs, resps: [0.5] * len(resps))
    assert plain["yesno"]["decoy<0.5"] != plain["yesno"]["decoy<0.5"]  # NaN: no decoys
    assert plain["yesno"]["counterpart>=0.5"] != plain["yesno"]["counterpart>=0.5"]
    assert "decoy<0.5" in sa.format_table({"m": out})


def test_eval_prints_the_short_answer_table_torch_free(tiny_int8, capsys, tmp_path):
    from rewardrt.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", str(tiny_int8[0]), "--no-baselines", "--probe-groups", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"Short answers: {3 * len(sa.KINDS)} generated probe groups" in text
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
