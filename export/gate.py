"""The export's *gate* stage: the written file, scored through the public runtime API on held-out
pairs, against the torch reference. Over budget raises :class:`FidelityError`; the exporter then
tries its next plan or gives up, writing nothing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rewardrt.export.config import FP32_MAX_RAW_DIFF, FidelityBudget
from rewardrt.export.errors import FidelityError
from rewardrt.export.pairs import Pairs
from rewardrt.runtime.metrics import Fidelity, fidelity


@dataclass(frozen=True)
class HeldOut:
    """Pairs the plan search never saw, the torch reference's raw scores of them, and where they
    come from (recorded in the artifact)."""

    pairs: Pairs
    reference_raw: np.ndarray
    description: str


@dataclass(frozen=True)
class Verdict:
    """What the gate measured: fidelity of the clamped scores, the raw max|Δ|, and what is over budget."""

    fidelity: Fidelity
    max_raw_abs_diff: float
    failures: tuple[str, ...]
    worst: str = ""   # the held-out pair with the largest clamped |Δ|, for the log

    @property
    def passed(self) -> bool:
        return not self.failures


def clamped_fidelity(ref_raw: np.ndarray, raw: np.ndarray) -> Fidelity:
    return fidelity(np.clip(ref_raw, 0, 1), np.clip(raw, 0, 1))


def worst_pair(pairs: Pairs, ref: np.ndarray, got: np.ndarray, width: int = 60) -> str:
    """The pair of ``pairs`` whose clamped scores differ most, as one line: the reference's start,
    the response's end (where a short answer is), and both scores."""
    ref, got = np.clip(ref, 0, 1), np.clip(got, 0, 1)
    i = int(np.argmax(np.abs(got - ref)))
    a, b = pairs.references[i], pairs.responses[i]
    a = a if len(a) <= width else a[:width] + "…"
    b = b if len(b) <= width else "…" + b[-width:]
    return f"reference {a!r}, response {b!r}: torch {ref[i]:.3f}, artifact {got[i]:.3f}"


def runtime_scores(path: Path, pairs: Pairs, threads: int | None) -> np.ndarray:
    """Raw scores of the written file through the public API (integrity check, spec, tokenizer)."""
    from rewardrt.runtime.api import RewardModel

    model = RewardModel(path, threads=threads)
    return np.asarray(model.raw_scores(pairs.responses, pairs.references), dtype=np.float64)


def budget_record(precision: str, budget: FidelityBudget) -> dict:
    """The budget a ``precision`` artifact was gated on, as its fidelity record states it."""
    return asdict(budget) if precision == "int8" else {"max_raw_abs_diff": FP32_MAX_RAW_DIFF}


def gate(path: Path, held_out: HeldOut, budget: FidelityBudget, precision: str,
         threads: int | None = None) -> Verdict:
    """The *gate* stage: the verdict on the artifact at ``path``. An ``int8`` artifact must keep its
    clamped scores inside ``budget``; an ``fp32`` one its raw scores within FP32_MAX_RAW_DIFF.
    Raises FidelityError (its ``report`` the Verdict) when it does not."""
    raw = runtime_scores(path, held_out.pairs, threads)
    fid = clamped_fidelity(held_out.reference_raw, raw)
    raw_diff = float(np.abs(raw - held_out.reference_raw).max())
    if precision == "fp32":
        failures = [] if raw_diff <= FP32_MAX_RAW_DIFF else [f"raw max|Δ| {raw_diff:.2e} > {FP32_MAX_RAW_DIFF}"]
    else:
        failures = budget.failures(fid)
    verdict = Verdict(fid, raw_diff, tuple(failures), worst_pair(held_out.pairs, held_out.reference_raw, raw))
    if failures:
        raise FidelityError(f"{str(path)!r} is over its fidelity budget on {len(held_out.pairs)} held-out "
                            f"pairs ({'; '.join(failures)}; largest on {verdict.worst})", verdict)
    return verdict
