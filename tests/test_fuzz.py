"""Fuzzing (hypothesis) of every public input of RewardModel and of ``rewardrt score``: each input
either scores in [0, 1] (finite) or raises the documented exception naming the argument; the CLI
exits 1 with the line number of the first bad line (or skips it), never with a traceback."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewardrt import RewardModel
from rewardrt.cli import main
from rewardrt.runtime import clibase
from rewardrt.runtime import scorer

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

STRANGE = [
    "", " ", "\t\n\r \u00a0\u2003", "\x00", "a\x00b", "\x07\x1b[31m\x7f", "\u202eevil\u202c", "مرحبا بالعالم",
    "שלום", "e\u0301\u0302\u0303" * 50, "Z\u0351\u0352\u0353\u0354" * 100, "👨‍👩‍👧‍👦🏳️‍🌈", "\ufeff\ufffe\uffff",
    "\U0010ffff", "中文字符" * 300, "[SEP] [CLS] [PAD] [UNK] [MASK]", "x" * 100_000, "word " * 20_000,
]
SURROGATES = ["\ud800", "ok \udfff", "\udc80\udcff"]

texts = st.one_of(st.text(st.characters(), max_size=300), st.sampled_from(STRANGE + SURROGATES))


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


@pytest.fixture(scope="module")
def model(tiny_int8) -> RewardModel:
    return RewardModel(tiny_int8[0], threads=1)


def _assert_scores(scores, n: int) -> None:
    assert isinstance(scores, list) and len(scores) == n
    assert all(type(s) is float and math.isfinite(s) and 0.0 <= s <= 1.0 for s in scores)


@FUZZ
@given(responses=st.lists(texts, max_size=12), reference=texts, batch_size=st.integers(1, 70))
def test_any_text_scores_or_names_the_bad_argument(model, responses, reference, batch_size):
    bad = [i for i, r in enumerate(responses) if _has_surrogate(r)]
    if bad:
        with pytest.raises(ValueError, match=rf"responses\[{bad[0]}\] holds a lone surrogate"):
            model.batch_score(responses, reference, batch_size=batch_size)
    elif _has_surrogate(reference):
        with pytest.raises(ValueError, match="reference holds a lone surrogate"):
            model.batch_score(responses, reference, batch_size=batch_size)
    else:
        _assert_scores(model.batch_score(responses, reference, batch_size=batch_size), len(responses))
        raw = model.raw_scores(responses, [reference] * len(responses), batch_size=batch_size)
        assert all(math.isfinite(r) for r in raw)
        ranked = model.rank(responses, reference)
        assert sorted(r.index for r in ranked) == list(range(len(responses)))


safe_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
values = st.one_of(safe_text, st.binary(max_size=8), st.none(), st.integers(), st.floats(),
                   st.lists(st.text(max_size=3), max_size=2), st.booleans())


@FUZZ
@given(responses=st.lists(values, max_size=8), references=st.lists(values, max_size=8))
def test_mixed_types_raise_type_errors_naming_the_index(model, responses, references):
    wrong = [i for i, v in enumerate(responses) if not isinstance(v, str)]
    if wrong:
        with pytest.raises(TypeError, match=rf"responses\[{wrong[0]}\] must be str, got "):
            model.batch_score(responses, references)
        return
    wrong = [i for i, v in enumerate(references) if not isinstance(v, str)]
    if wrong:
        with pytest.raises(TypeError, match=rf"reference\[{wrong[0]}\] must be str, got "):
            model.batch_score(responses, references)
    elif len(references) != len(responses):
        with pytest.raises(ValueError, match=f"got {len(references)} references for {len(responses)}"):
            model.batch_score(responses, references)
    else:
        _assert_scores(model.batch_score(responses, references), len(responses))


@pytest.mark.parametrize("call, exc, match", [
    (lambda m: m.score(b"x", "r"), TypeError, "response must be str, got bytes"),
    (lambda m: m.score("x", None), TypeError, "reference must be str, got NoneType"),
    (lambda m: m.score("\ud800", "r"), ValueError, r"response holds a lone surrogate '\\ud800' at index 0"),
    (lambda m: m.batch_score(None, "r"), TypeError, "responses must be a list of str, got NoneType"),
    (lambda m: m.batch_score(b"ab", "r"), TypeError, "responses must be a list of str, got bytes"),
    (lambda m: m.batch_score(["a"], 3), TypeError, "reference must be a list of str, got int"),
    (lambda m: m.batch_score(["a"], ["ok", "\udfff"][1:]), ValueError, r"reference\[0\] holds a lone surrogate"),
    (lambda m: m.batch_score(["a"], "r", batch_size=True), TypeError, "batch_size must be an int"),
    (lambda m: m.rank(["a", None], "r"), TypeError, r"responses\[1\] must be str"),
])
def test_documented_errors(model, call, exc, match):
    with pytest.raises(exc, match=match):
        call(model)


def test_huge_list_is_scored_in_bounded_chunks(model, monkeypatch):
    responses = [f"answer number {i}" for i in range(3000)]
    expected = model.batch_score(responses, "the reference")
    monkeypatch.setattr(scorer, "TOKENIZE_CHUNK", 257)  # token ids are never held for all texts at once
    assert model.batch_score(responses * 2, "the reference") == expected * 2


def test_strange_inputs_on_the_default_model():
    model = RewardModel()
    strange = ["x" * 100_000, "\x00\x00", "\u202eevil\u202c", "e\u0301" * 100, "👨‍👩‍👧‍👦", " \t\n", ""]
    _assert_scores(model.batch_score(strange, "The capital of France is Paris."), len(strange))
    with pytest.raises(ValueError, match=r"responses\[1\] holds a lone surrogate"):
        model.batch_score(["fine", "\ud800"], "ref")


# --- the CLI -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cached_model(model):
    """``rewardrt score`` without loading the model for every example."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clibase, "load_model", lambda path, threads=None: model)
        yield model


json_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                        st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
good_line = st.builds(lambda ref, resp, extra: (json.dumps({"reference": ref, "response": resp, "x": extra},
                                                           ensure_ascii=False).encode(), True),
                      safe_text, safe_text, json_values)
bad_lines = st.one_of(
    st.builds(lambda v, resp: (json.dumps({"reference": v, "response": resp}).encode(), False), json_values, safe_text),
    st.builds(lambda resp: (json.dumps({"response": resp}).encode(), False), safe_text),
    st.builds(lambda s: (json.dumps({"reference": s + "\ud800", "response": "r"}).encode(), False), safe_text),
    st.builds(lambda v: (json.dumps(v).encode(), False), json_values.filter(lambda v: not isinstance(v, dict))),
    st.builds(lambda s: (("{\x01" + s).encode(), False), safe_text.filter(lambda s: "\n" not in s)),
    st.builds(lambda b: (b"\xff" + b, False), st.binary(max_size=20).filter(lambda b: b"\n" not in b)),
)


@FUZZ
@given(lines=st.lists(st.one_of(good_line, good_line, bad_lines), min_size=1, max_size=12),
       skip=st.booleans())
def test_cli_score_reports_bad_lines_without_traceback(cached_model, tmp_path_factory, lines, skip):
    folder = tmp_path_factory.mktemp("cli")
    src, dst = folder / "in.jsonl", folder / "out.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line, _ in lines))
    err = io.StringIO()
    argv = ["score", "--input", str(src), "--output", str(dst)] + (["--on-error", "skip"] if skip else [])
    with contextlib.redirect_stderr(err):
        code = main(argv)
    out = [json.loads(x) for x in dst.read_bytes().splitlines()]
    valid = [json.loads(line) for line, ok in lines if ok]
    bad = [number for number, (_, ok) in enumerate(lines, 1) if not ok]
    assert "Traceback" not in err.getvalue()
    if skip or not bad:
        assert code == 0, err.getvalue()
        assert [{k: v for k, v in o.items() if k != "score"} for o in out] == valid
        if bad:
            assert f"skipped {len(bad)} malformed lines" in err.getvalue()
    else:
        assert code == 1
        assert f"line {bad[0]}: " in err.getvalue()
        assert len(out) == bad[0] - 1  # every line before the first bad one is written
    for o in out:
        assert math.isfinite(o["score"]) and 0.0 <= o["score"] <= 1.0
