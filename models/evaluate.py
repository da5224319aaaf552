"""The seed-style evaluation table of a reward model on labelled pairs (``rewardrt eval``).

Rows: Spearman vs gold similarity per source; ROC-AUC on binary labels (MSRP paraphrase, SICK
ENTAILMENT vs CONTRADICTION); the confound rate (% of CONTRADICTION pairs with word-F1 >= 0.5 that
score > 0.7, lower is better); one-word swap probes (antonym / negation / number / synonym control):
mean score drop vs the unedited pair and % "noticed" (drop > 0.15).
Columns: any scorers, e.g. Word F1, base-embedding cosine, the fp32 reference, the INT8 artifact.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rewardrt.models.edits import EDITS, SWAP_PROBES
from rewardrt.runtime.metrics import roc_auc, spearman
from rewardrt.runtime.rows import read_rows

# (references, responses) -> scores in [0, 1]
Scorer = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
NOTICED_DROP = 0.15
CONFOUND_F1 = 0.5
CONFOUND_SCORE = 0.7
HIGHER_IS_BETTER = {"confound": False}


def _normalize(text: str) -> list[str]:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def word_f1(reference: str, response: str) -> float:
    """SQuAD-style token F1 (lowercased, punctuation and articles removed)."""
    ref, resp = _normalize(reference), _normalize(response)
    if not ref and not resp:
        return 1.0
    common = sum((Counter(ref) & Counter(resp)).values())
    if common == 0:
        return 0.0
    p, r = common / len(resp), common / len(ref)
    return 2 * p * r / (p + r)


def word_f1_scorer(references: Sequence[str], responses: Sequence[str]) -> list[float]:
    return [word_f1(a, b) for a, b in zip(references, responses)]


def read_labelled(path: str | Path) -> list[dict]:
    """Labelled pairs (``a`` the reference, ``b`` the response, ``source``; optional
    ``similarity``, ``entailment``, ``paraphrase``). A row that is not a JSON object, lacks a field,
    holds a non-string text or an empty reference fails naming the file, line and field."""
    return read_rows(path, ("a", "b", "source"), non_empty=("a",))


def swap_probes(rows: Sequence[dict], per_rule: int = 300, seed: int = 7) -> dict[str, list[tuple[str, str]]]:
    """(original, edited) sentence pairs per probe, from the references of ``rows``."""
    rng = random.Random(seed)
    sentences = sorted({r["a"] for r in rows})
    rng.shuffle(sentences)
    probes = {}
    for name in SWAP_PROBES:
        rule = EDITS[name][0]
        out = []
        for s in sentences:
            edited = rule(s, rng)
            if edited is not None and edited != s:
                out.append((s, edited))
            if len(out) >= per_rule:
                break
        probes[name] = out
    return probes


def is_confound_pair(row: dict) -> bool:
    """A CONTRADICTION pair whose wording overlaps (word-F1 >= 0.5): the pairs the confound rate counts."""
    return row.get("entailment") == "CONTRADICTION" and word_f1(row["a"], row["b"]) >= CONFOUND_F1


def confound_rate(rows: Sequence[dict], scores: np.ndarray) -> float | None:
    """Share of the CONTRADICTION pairs with word-F1 >= 0.5 scored > 0.7 (None: no such pair)."""
    conf = np.array([is_confound_pair(r) for r in rows], dtype=bool)
    return float(np.mean(scores[conf] > CONFOUND_SCORE)) if conf.any() else None


def evaluate(rows: Sequence[dict], scorer: Scorer, probes: dict[str, list[tuple[str, str]]]) -> dict[str, float]:
    refs = [r["a"] for r in rows]
    resps = [r["b"] for r in rows]
    scores = np.asarray(scorer(refs, resps), dtype=np.float64)
    gold = np.array([float(r.get("similarity", np.nan)) for r in rows])
    source = np.array([r["source"] for r in rows])
    out: dict[str, float] = {}
    for s in sorted(set(source)):
        sel = (source == s) & ~np.isnan(gold)
        if sel.sum() >= 2:
            out[f"spearman {s}"] = spearman(scores[sel], gold[sel])
    para = np.array([r.get("paraphrase") for r in rows], dtype=object)
    sel = np.array([p is not None for p in para])
    if sel.any():
        out["auc msrp paraphrase"] = roc_auc(scores[sel], para[sel].astype(int) == 1)
    ent = np.array([r.get("entailment") for r in rows], dtype=object)
    sel = (ent == "ENTAILMENT") | (ent == "CONTRADICTION")
    if sel.any():
        out["auc sick entail-vs-contra"] = roc_auc(scores[sel], ent[sel] == "ENTAILMENT")
        rate = confound_rate(rows, scores)
        if rate is not None:
            out["confound"] = rate
    originals = [a for pairs in probes.values() for a, _ in pairs]
    edited = [b for pairs in probes.values() for _, b in pairs]
    if originals:
        same = np.asarray(scorer(originals, originals), dtype=np.float64)
        changed = np.asarray(scorer(originals, edited), dtype=np.float64)
        drops = same - changed
        start = 0
        for name, pairs in probes.items():
            d = drops[start : start + len(pairs)]
            start += len(pairs)
            if len(d):
                out[f"swap {name} drop"] = float(d.mean())
                out[f"swap {name} noticed"] = float(np.mean(d > NOTICED_DROP))
    return out


def format_table(columns: dict[str, dict[str, float]], counts: dict[str, int] | None = None) -> str:
    """Markdown table, metrics as rows, scorers as columns."""
    names = list(columns)
    metrics = list(dict.fromkeys(k for c in columns.values() for k in c))
    head = "| metric | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    for m in metrics:
        cells = []
        for n in names:
            v = columns[n].get(m)
            if v is None or np.isnan(v):
                cells.append("–")
            elif m == "confound" or m.endswith("noticed"):
                cells.append(f"{100 * v:.1f}%")
            else:
                cells.append(f"{v:.3f}")
        label = m + (" (lower is better)" if m == "confound" else "")
        if counts and m in counts:
            label += f" (n={counts[m]})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SPREAD_EDGES = (0.2, 0.4, 0.6, 0.8)


def spread_table(scores: Sequence[float]) -> str:
    """How scores spread over [0, 1]: percentiles and the share of pairs per range (calibration)."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size == 0:
        raise ValueError("scores is empty")
    pct = np.percentile(x, [5, 25, 50, 75, 95])
    lines = ["Percentiles 5/25/50/75/95: " + " / ".join(f"{v:.2f}" for v in pct), "",
             "| score range | share of pairs |", "|---|---|"]
    edges = (0.0,) + SPREAD_EDGES + (1.0,)
    ranges = [("exactly 0 (clamped)", x == 0.0)]
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        low = (x > lo) if i == 0 else (x >= lo)
        ranges.append((f"{'(' if i == 0 else '['}{lo:g}, {hi:g})", low & (x < hi)))
    ranges.append(("exactly 1 (clamped)", x == 1.0))
    lines += [f"| {name} | {100 * sel.mean():.1f}% |" for name, sel in ranges]
    return "\n".join(lines)
