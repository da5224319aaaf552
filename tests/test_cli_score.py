"""``rewardrt score`` and ``rewardrt rank``: one item, or streaming JSONL with per-line errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import assert_one_line_error

from rewardrt.cli import main
from rewardrt.runtime.cli import jsonl as cli_jsonl
from rewardrt.runtime.api import RewardModel

REF = "The capital of France is Paris."


@pytest.fixture(scope="module")
def model(tiny_int8) -> RewardModel:
    return RewardModel(tiny_int8[0])


@pytest.fixture
def path(tiny_int8) -> str:
    return str(tiny_int8[0])


def lines(objs) -> str:
    return "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs)


def read_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def stdin_bytes(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


# --- one item ------------------------------------------------------------------------------------------

def test_score_one_pair(path, model, capsys):
    assert main(["score", "--model", path, "--reference", REF, "--response", "Paris."]) == 0
    assert capsys.readouterr().out == f"{model.score('Paris.', REF):.6f}\n"


def test_rank_one_list(path, model, capsys):
    responses = ["Lyon.", "Paris.", "Paris, France."]
    assert main(["rank", "--model", path, "--reference", REF, *responses]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    expected = model.rank(responses, REF)
    assert [(int(i), r) for _, i, r in rows] == [(e.index, e.response) for e in expected]


def test_one_item_honours_output(path, model, tmp_path, capsys):
    out = tmp_path / "one.jsonl"
    assert main(["score", "--model", path, "--reference", REF, "--response", "Paris.", "--output", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert read_jsonl(out.read_text()) == [{"reference": REF, "response": "Paris.", "score": model.score("Paris.", REF)}]
    ranked = tmp_path / "ranked.jsonl"
    assert main(["rank", "--model", path, "--reference", REF, "Lyon.", "Paris.", "--output", str(ranked)]) == 0
    row = read_jsonl(ranked.read_text())[0]
    assert row["ranked"] == [{"index": r.index, "response": r.response, "score": r.score}
                             for r in model.rank(["Lyon.", "Paris."], REF)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "ranked.jsonl"]  # no temporary left
    assert main(["score", "--model", path, "--reference", REF, "--response", "x",
                 "--output", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["score", "--threads", "0", "--reference", "r", "--response", "x"], r"argument --threads: must be an integer >= 1, got '0'"),
    (["rank", "--threads", "two", "--reference", "r", "x"], r"argument --threads: must be an integer >= 1, got 'two'"),
    (["score", "--actors", "0", "--input", "x", "--ray", "local"], "argument --actors: must be an integer >= 1"),
    (["export", "ckpt", "-o", "x.onnx", "--max-length", "2"], r"argument --max-length: must be an integer in \[3, 8192\]"),
    (["export", "ckpt", "-o", "x.onnx", "--agreement-margin", "0"], "argument --agreement-margin: must be a number > 0"),
    (["export", "ckpt", "-o", "x.onnx", "--gate-retries", "9"], r"argument --gate-retries: must be an integer in \[0, 8\]"),
    (["train", "--cpus", "0"], "argument --cpus: must be an integer >= 1"),
    (["eval", "--probe-seed", "x"], "argument --probe-seed: must be an integer, got 'x'"),
    (["bench", "--rounds", "0"], "--rounds"),
    (["nosuchcommand"], "argument COMMAND: invalid choice"),
    (["score", "--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_every_bad_option_value_is_one_line_exit_2(argv, needle, cli):
    assert_one_line_error(*cli(argv)[::2], needle)


@pytest.mark.parametrize("argv, needle", [
    (["score", "--reference", "r"], "--reference and --response go together"),
    (["score"], "give either --reference and --response, or --input FILE"),
    (["score", "--reference", "r", "--response", "x", "--input", "f"], "give either"),
    (["rank", "a", "b"], "--reference and the responses to rank go together"),
])
def test_usage_errors(argv, needle, capsys):
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_missing_model_and_input_are_one_line_errors(path, tmp_path, capsys):
    assert main(["score", "--model", str(tmp_path / "none.onnx"), "--reference", "r", "--response", "x"]) == 2
    assert capsys.readouterr().err.startswith("error: model file")
    assert main(["score", "--model", path, "--input", str(tmp_path / "none.jsonl")]) == 2
    assert "cannot open" in capsys.readouterr().err


# --- JSONL -----------------------------------------------------------------------------------------------

def test_score_file_passes_fields_through(path, model, tmp_path, capsys):
    rows = [{"id": i, "reference": REF, "response": r, "meta": {"k": "é"}}
            for i, r in enumerate(["Paris.", "Lyon.", "Paris is the capital.", "Je ne sais pas."])]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(lines(rows), encoding="utf-8")
    assert main(["score", "--model", path, "--input", str(src), "--output", str(dst)]) == 0
    out = read_jsonl(dst.read_text(encoding="utf-8"))
    scores = model.batch_score([r["response"] for r in rows], REF)
    assert out == [{**row, "score": s} for row, s in zip(rows, scores)]
    assert "wrote 4 lines" in capsys.readouterr().err


def test_score_stdin_to_stdout(path, model, monkeypatch, capsys):
    rows = [{"reference": REF, "response": "Paris."}, {"reference": "x", "response": "y", "extra": [1]}]
    stdin_bytes(monkeypatch, lines(rows).encode())
    assert main(["score", "--model", path, "--input", "-", "--output", "-"]) == 0
    captured = capsys.readouterr()
    out = read_jsonl(captured.out)
    assert [o["score"] for o in out] == model.batch_score(["Paris.", "y"], [REF, "x"])
    assert out[1]["extra"] == [1]
    assert "\r" not in captured.err  # stderr is not a terminal: no progress bar


BAD = (lines([{"reference": REF, "response": "ok 1"}]) + "\n"  # blank lines are fine
       + "{not json\n" + lines([{"reference": REF, "response": 5}, ["a list"], {"response": "no ref"}])
       ).encode() + b"\xff\xfe\n" + lines([{"reference": REF, "response": "ok 2"}]).encode()


def test_on_error_stop_names_the_line(path, monkeypatch, capsys):
    stdin_bytes(monkeypatch, BAD)
    assert main(["score", "--model", path, "--input", "-"]) == 1
    captured = capsys.readouterr()
    assert "stdin line 3: invalid JSON" in captured.err and "stopped after writing 1 lines" in captured.err
    assert [o["response"] for o in read_jsonl(captured.out)] == ["ok 1"]  # lines before it are kept


def test_on_error_skip_reports_every_line(path, monkeypatch, capsys):
    stdin_bytes(monkeypatch, BAD)
    assert main(["score", "--model", path, "--input", "-", "--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert [o["response"] for o in read_jsonl(captured.out)] == ["ok 1", "ok 2"]
    for needle in ("skipped 5 malformed lines", "line 3: invalid JSON",
                   "line 4: field 'response' must be a string, got int", "line 5: expected a JSON object",
                   "line 6: missing field 'reference'", "line 7: not UTF-8 text"):
        assert needle in captured.err


def test_streaming_writes_before_reading_everything(path, model, monkeypatch, tmp_path):
    """Constant memory: output is flushed chunk by chunk while input is still being read."""
    monkeypatch.setattr(cli_jsonl, "CHUNK", 2)
    dst = tmp_path / "out.jsonl"
    seen: list[int] = []

    class Source:
        buffer = None

        def __iter__(self):
            for i in range(7):
                if i == 6:  # by now 3 chunks of 2 must be on disk
                    seen.append(len(dst.read_bytes().splitlines()))
                yield json.dumps({"reference": REF, "response": f"r{i}"}).encode() + b"\n"

    source = Source()
    source.buffer = source
    monkeypatch.setattr(sys, "stdin", source)
    assert main(["score", "--model", path, "--input", "-", "--output", str(dst)]) == 0
    assert seen == [6]
    out = read_jsonl(dst.read_text())
    assert [o["score"] for o in out] == model.batch_score([f"r{i}" for i in range(7)], REF)


def test_progress_bar_only_on_a_terminal(path, monkeypatch, tmp_path):
    pytest.importorskip("tqdm")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    src = tmp_path / "in.jsonl"
    src.write_text(lines([{"reference": REF, "response": "Paris."}] * 3))
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["score", "--model", path, "--input", str(src), "--output", str(tmp_path / "o.jsonl")]) == 0
    assert "3line" in err.getvalue().replace(" ", "")  # tqdm's "3line [..]" counter


def test_rank_file(path, model, tmp_path):
    rows = [{"q": 1, "reference": REF, "responses": ["Lyon.", "Paris."]},
            {"q": 2, "reference": "4", "responses": ["four", "4", "five"]},
            {"q": 3, "reference": "x", "responses": []}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(lines(rows))
    assert main(["rank", "--model", path, "--input", str(src), "--output", str(dst)]) == 0
    out = read_jsonl(dst.read_text())
    for row, got in zip(rows, out):
        expected = model.rank(row["responses"], row["reference"])
        assert got == {**row, "ranked": [{"index": e.index, "response": e.response, "score": e.score}
                                          for e in expected]}


def test_rank_file_errors(path, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(lines([{"reference": REF, "responses": "Paris."}]))
    assert main(["rank", "--model", path, "--input", str(src)]) == 1
    assert "line 1: field 'responses' must be a list of strings" in capsys.readouterr().err


def test_console_script_pipes(path, model):
    """The real entry point, with real pipes (binary stdin/stdout, UTF-8 whatever the locale)."""
    rows = [{"reference": "Réponse", "response": "réponse ✓"}, {"reference": REF, "response": "Paris."}]
    out = subprocess.run([sys.executable, "-m", "rewardrt", "score", "--model", path, "--input", "-"],
                         input=lines(rows).encode(), capture_output=True, timeout=120,
                         env={**os.environ, "LC_ALL": "C"})
    assert out.returncode == 0, out.stderr.decode()
    got = read_jsonl(out.stdout.decode("utf-8"))
    assert [g["response"] for g in got] == ["réponse ✓", "Paris."]
    assert [g["score"] for g in got] == model.batch_score([r["response"] for r in rows],
                                                          [r["reference"] for r in rows])
