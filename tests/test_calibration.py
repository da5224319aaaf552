"""The bundled pair set and a user's own calibration file (``rewardrt export --calibration``)."""

from __future__ import annotations

import json

import pytest

from rewardrt.export import calibration
from rewardrt.export.errors import ExportError
from rewardrt.export.pairs import calibration_pairs, load_pair_set, validation_pairs


def test_bundled_set_is_what_the_generator_writes(tmp_path):
    out = tmp_path / "pairs.jsonl"
    calibration.write(out)
    assert out.read_bytes() == calibration.BUNDLED.read_bytes()


def test_bundled_set_covers_short_answers_sentences_and_long_inputs():
    rows = [json.loads(line) for line in calibration.BUNDLED.read_text(encoding="utf-8").splitlines()]
    kinds = {r["kind"] for r in rows}
    assert {"sentence", "long-worked", "long-text"} <= kinds
    assert {f"short-{k}" for k in ("number", "fraction", "yesno", "option", "date", "entity", "worked")} <= kinds
    assert 1000 <= len(rows) <= 5000 and calibration.BUNDLED.stat().st_size < 3_000_000
    assert max(len(r["response"].split()) for r in rows) > 150  # long inputs are there


def test_gate_never_sees_a_calibration_row():
    ps = load_pair_set()
    cal = {(r["reference"], r["response"]) for r in ps.calibration}
    gate = {(r["reference"], r["response"]) for r in ps.gate}
    assert len(cal) == len(ps.calibration) and len(gate) == len(ps.gate) and len(cal) + len(gate) > 2500
    assert not cal & gate
    assert len(calibration_pairs(ps, 64)) == 64 + 4 and len(validation_pairs(ps, 50, n_long=3)) == 53


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_users_file_is_split_into_calibration_and_held_out_rows(tmp_path):
    rows = [{"reference": f"ref {i}", "response": f"resp {i}", "extra": i} for i in range(40)]
    ps = load_pair_set(_write(tmp_path / "mine.jsonl", rows))
    assert len(ps.calibration) == 20 and len(ps.gate) == 20
    assert not {r["extra"] for r in ps.calibration} & {r["extra"] for r in ps.gate}
    assert ps.source.endswith("mine.jsonl")
    repeated = load_pair_set(_write(tmp_path / "rep.jsonl", rows + rows[:10]))  # repeats are dropped
    pairs = lambda part: {(r["reference"], r["response"]) for r in part}  # noqa: E731
    assert len(repeated.calibration) + len(repeated.gate) == 40 and not pairs(repeated.calibration) & pairs(repeated.gate)


@pytest.mark.parametrize("rows, match", [
    ([], "holds no pairs"),
    (["not json"], r"bad\.jsonl:1: not JSON"),
    ([{"reference": "a", "response": "b"}, ["a", "b"]], r"bad\.jsonl:2: expected a JSON object"),
    ([{"response": "b"}], r"bad\.jsonl:1: field 'reference' is missing"),
    ([{"reference": "a", "response": "b"}, {"reference": "a", "response": 3}],
     r"bad\.jsonl:2: field 'response' must be a string, got int"),
    ([{"reference": "a", "response": "b"}] * 3, "at least 8"),
])
def test_bad_calibration_files_name_file_line_and_field(tmp_path, rows, match):
    with pytest.raises(ExportError, match=match):
        load_pair_set(_write(tmp_path / "bad.jsonl", rows))


def test_missing_calibration_file(tmp_path):
    with pytest.raises(ExportError, match="--calibration .*nope.jsonl.* does not exist"):
        load_pair_set(tmp_path / "nope.jsonl")


def test_export_cli_refuses_a_bad_calibration_file_and_writes_nothing(tiny_checkpoint, tmp_path, capsys):
    from rewardrt.cli import main

    bad = _write(tmp_path / "bad.jsonl", [{"reference": "a", "response": "b"}, {"reference": "a"}])
    out = tmp_path / "out.onnx"
    code = main(["export", str(tiny_checkpoint), "-o", str(out), "--calibration", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "bad.jsonl:2: field 'response' is missing" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


def test_export_calibrates_and_gates_on_a_users_file(tiny_checkpoint, tmp_path):
    from rewardrt.export.config import ExportConfig
    from rewardrt.export.exporter import export
    from rewardrt.runtime import RewardModel

    ps = load_pair_set()
    mine = _write(tmp_path / "mine.jsonl", [{"reference": r["reference"], "response": r["response"]}
                                             for r in ps.gate[:120]])
    out = tmp_path / "mine.int8.onnx"
    report = export(tiny_checkpoint, out, ExportConfig(calibration=str(mine), calibration_size=32,
                                                      activation_bits=7))
    assert report.passed
    fid = RewardModel(out).spec.fidelity
    assert "mine.jsonl" in fid.validation and fid.n == 60 + 48
