"""Agreement and ranking statistics shared by the export gate, ``rewardrt eval`` and the bench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def _stats():
    try:
        from scipy import stats
    except ImportError as exc:  # the base runtime install does not need scipy
        raise ImportError("these statistics need scipy; pip install 'rewardrt[eval]'") from exc
    return stats


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged); nan when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(_stats().spearmanr(a, b).statistic)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (Mann-Whitney U / n1 n0)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    u = _stats().mannwhitneyu(pos, neg, alternative="two-sided").statistic
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class Fidelity:
    """How far a candidate's scores are from the reference's on the same pairs."""

    n: int
    max_abs_diff: float
    mean_abs_diff: float
    spearman: float
    agreement_at_half: float   # share of pairs on the same side of 0.5

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"n={self.n} max|Δ|={self.max_abs_diff:.5f} mean|Δ|={self.mean_abs_diff:.5f} "
                f"spearman={self.spearman:.5f} agree@0.5={100 * self.agreement_at_half:.2f}%")


def fidelity(reference: Sequence[float], candidate: Sequence[float]) -> Fidelity:
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError(f"reference and candidate must be equal-length 1-D, got {ref.shape} and {cand.shape}")
    diff = np.abs(ref - cand)
    return Fidelity(
        n=int(ref.size),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        spearman=spearman(ref, cand),
        agreement_at_half=float(np.mean((ref > 0.5) == (cand > 0.5))),
    )
