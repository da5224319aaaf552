"""Evaluation table pieces and the edit rules behind the swap probes."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import assert_one_line_error

from rewardrt.models import edits
from rewardrt.models.evaluate import evaluate, format_table, swap_probes, word_f1, word_f1_scorer
from rewardrt.runtime.metrics import fidelity, roc_auc, spearman


def test_word_f1():
    assert word_f1("The cat sat.", "the cat sat") == 1.0
    assert word_f1("a cat", "dog") == 0.0
    assert word_f1("cat sat on mat", "cat sat") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_rank_statistics():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    f = fidelity([0.1, 0.6, 0.9], [0.1, 0.4, 0.9])
    assert f.max_abs_diff == pytest.approx(0.2) and f.agreement_at_half == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal-length"):
        fidelity([0.1], [0.1, 0.2])


@pytest.mark.parametrize("rule,text,expected", [
    (edits.negation_flip, "The man is playing a guitar.", "The man is not playing a guitar."),
    (edits.negation_flip, "The man is not playing.", "The man is playing."),
    (edits.antonym_swap, "The water is hot.", "The water is cold."),
    (edits.synonym_swap, "A big dog.", "A large dog."),
    (edits.reorder_clauses, "A man is cooking food and a woman is reading a book.",
     "A woman is reading a book and a man is cooking food."),
])
def test_edit_rules(rule, text, expected):
    assert rule(text, random.Random(0)) == expected


@pytest.mark.parametrize("text,kind", [
    ("The capital of France is Paris.", {"Paris", "France"}),
    ("A dog is running in the park.", {"dog"}),
    ("The meeting is on Monday.", {"Monday"}),
])
def test_entity_swap_replaces_one_entity_by_another_of_its_kind(text, kind):
    out = edits.entity_swap(text, random.Random(0))
    assert out is not None and out != text
    removed = set(text.replace(".", "").split()) - set(out.replace(".", "").split())
    assert len(removed) == 1 and removed <= kind


def test_entity_swap_matches_proper_nouns_by_case():
    assert edits.entity_swap("We ate turkey and china plates broke.", random.Random(0)) is None
    assert edits.entity_swap("Nothing to swap here.", random.Random(0)) is None


def test_number_swap_changes_the_number():
    out = edits.number_swap("He bought 3 apples.", random.Random(0))
    assert out != "He bought 3 apples." and out.startswith("He bought ") and "3 " not in out


def test_rules_that_do_not_apply_return_none():
    assert edits.number_swap("No digits here.", random.Random(0)) is None
    assert edits.antonym_swap("Zzz qqq.", random.Random(0)) is None


def test_evaluate_table_on_word_f1():
    rows = [
        {"a": "A man plays guitar.", "b": "A man plays a guitar.", "source": "s", "similarity": 0.9},
        {"a": "A man plays guitar.", "b": "A dog runs.", "source": "s", "similarity": 0.1},
        {"a": "The black cat is big.", "b": "The black cat is small.", "source": "sick2014", "similarity": 0.6,
         "entailment": "CONTRADICTION"},
        {"a": "The cat is big.", "b": "The cat is large.", "source": "sick2014", "similarity": 0.9,
         "entailment": "ENTAILMENT"},
    ]
    probes = swap_probes(rows, per_rule=5)
    table = evaluate(rows, word_f1_scorer, probes)
    assert table["spearman s"] == pytest.approx(1.0)
    assert table["confound"] == 1.0  # word F1 is fooled: 0.75 > 0.7 for the contradiction
    assert table["swap antonym drop"] > 0
    text = format_table({"Word F1": table})
    assert "| confound (lower is better) | 100.0% |" in text
    assert not np.isnan(table["auc sick entail-vs-contra"])


def test_spread_table_shares_sum_to_all_pairs():
    from rewardrt.models.evaluate import spread_table

    text = spread_table([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.0])
    shares = [float(line.split("|")[2].strip().rstrip("%")) for line in text.splitlines() if line.startswith("| ") and "%" in line]
    assert len(shares) == 7 and abs(sum(shares) - 100) < 1e-6
    assert "| exactly 1 (clamped) | 25.0% |" in text and "| (0, 0.2) | 12.5% |" in text
    with pytest.raises(ValueError, match="empty"):
        spread_table([])


@pytest.mark.parametrize("line, match", [
    ('{"b": "x", "source": "s"}', r"bad.jsonl:2: field 'a' is missing"),
    ('{"a": "x", "b": 4, "source": "s"}', r"bad.jsonl:2: field 'b' must be a string, got int"),
    ('{"a": "", "b": "x", "source": "s"}', r"bad.jsonl:2: field 'a' \(the reference\) is empty"),
    ('"just text"', r"bad.jsonl:2: expected a JSON object"),
])
def test_bad_eval_rows_name_file_line_and_field(tmp_path, line, match):
    from rewardrt.models.evaluate import read_labelled

    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": "y", "source": "s"}\n' + line + "\n")
    with pytest.raises(ValueError, match=match):
        read_labelled(path)


def test_eval_cli_bad_data_is_one_line(tmp_path, tiny_int8, cli):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": "x", "b": 3, "source": "s"}\n')
    assert_one_line_error(*cli(["eval", str(tiny_int8[0]), str(path), "--no-baselines"])[::2],
                          r"bad.jsonl:1: field 'b' must be a string")
