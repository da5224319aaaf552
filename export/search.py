"""The export's *plan* stage: which scheme each MatMul gets. A start plan (an artifact's recorded
plan) when it fits, else a search; either way a :class:`PlanSearch` holding the typed
:class:`~rewardrt.export.quantize.QuantPlan`, and the plans to fall back on if the held-out gate
rejects it (:func:`gate_fallbacks`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from rewardrt.export import quantize
from rewardrt.export.config import ExportConfig, FidelityBudget
from rewardrt.export.fit import Calibration
from rewardrt.export.gate import clamped_fidelity
from rewardrt.export.pairs import Pairs
from rewardrt.export.quantize import QuantPlan
from rewardrt.runtime.spec import ArtifactSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanSearch:
    """The plan stage's answer: ``plan``, and how it was found."""

    plan: QuantPlan
    search_target: FidelityBudget
    start_scheme: str                  # where the search started: "dequant", "fp32", "start plan"
    seconds: float
    start_plan_fits: bool = False      # the start plan was kept: no search ran
    sensitivity: Mapping[str, float] | None = None   # per MatMul, calibration mean|Δ| alone as token
    leftovers_to_block: str | None = None            # "moved K of N" or "not tried"

    def fallbacks(self, cfg: ExportConfig) -> list[QuantPlan]:
        """Plans for the gate to try after ``plan`` (none for a kept start plan: the export searches)."""
        if self.start_plan_fits:
            return []
        sensitivity = {s: round(v, 6) for s, v in (self.sensitivity or {}).items()}  # as recorded
        ladder = gate_fallbacks(dict(self.plan.schemes), sensitivity, cfg.gate_retries,
                                self.start_scheme, cfg.search_weight_only)
        return [self.plan.with_schemes(s) for s in ladder]

    def record_entries(self) -> dict:
        """This search's entries of the artifact's quantization record."""
        out: dict = {"search_target": asdict(self.search_target), "start_scheme": self.start_scheme,
                     "search_seconds": round(self.seconds, 1)}
        if self.start_plan_fits:
            out["search"] = "start plan fits"
        if self.sensitivity is not None:
            out["sensitivity_mean_abs"] = {s: round(v, 6) for s, v in self.sensitivity.items()}
            out["leftovers_to_block"] = self.leftovers_to_block
        return out


def base_plan(cfg: ExportConfig) -> QuantPlan:
    """The options of every plan an export tries (no MatMul named yet); ``cfg`` resolved."""
    if cfg.bits is None:
        raise ValueError("target 'auto' is decided when the export runs; call resolve_target first")
    return QuantPlan({}, activation_bits=cfg.bits, block_size=cfg.block_size, chain=cfg.activation_chain,
                     one_sided_gelu=cfg.one_sided_gelu, smooth_alpha=cfg.smooth_alpha,
                     outlier_channels=cfg.outlier_channels, gptq=cfg.gptq,
                     embedding_table=cfg.embedding_table)


def _trial_scores(model: onnx.ModelProto, spec: ArtifactSpec, encoder, pairs: Pairs,
                  threads: int | None) -> np.ndarray:
    """Raw scores of a candidate graph in memory: the runtime's session factory and scorer on its
    serialized bytes, with no file written, sealed, hashed and re-read (the plan search's trials;
    the gate still scores the written file through ``RewardModel``)."""
    from rewardrt.runtime.scorer import Scorer
    from rewardrt.runtime.session import make_session

    scorer = Scorer(make_session(model.SerializeToString(), threads), encoder, spec, "trial")
    return np.asarray(scorer.run(pairs.references, pairs.responses, 64, "raw_score"), dtype=np.float64)


class _Trials:
    """Scores plans on calibration pairs (in memory) and says whether they fit the search target."""

    def __init__(self, fp32: onnx.ModelProto, cal: Calibration, cfg: ExportConfig, tokenizer_json: str,
                 max_length: int, cache: dict) -> None:
        from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer

        self.fp32, self.cal, self.cfg, self.cache = fp32, cal, cfg, cache
        self.base = base_plan(cfg)
        self.target = cfg.budget.scaled(cfg.search_margin, cfg.agreement_margin)
        self.spec = ArtifactSpec(precision="int8", max_length=max_length, single_row_safe=True)
        self.encoder = PairEncoder(load_tokenizer(tokenizer_json, "calibration"), max_length)

    def scores(self, schemes: Mapping[str, str], tag: str, pick: np.ndarray | None = None) -> np.ndarray:
        log.debug("trial %s", tag)
        pairs = self.cal.pairs if pick is None else Pairs([self.cal.pairs.references[i] for i in pick],
                                                          [self.cal.pairs.responses[i] for i in pick])
        model = quantize.quantize(self.fp32, self.base.with_schemes(schemes), self.cal.stats, self.cache)
        return _trial_scores(model, self.spec, self.encoder, pairs, self.cfg.threads)

    def fits(self, schemes: Mapping[str, str], tag: str) -> bool:
        return not self.target.failures(clamped_fidelity(self.cal.reference_raw, self.scores(schemes, tag)))

    def longest_prefix(self, plan: dict[str, str], candidates: list[str], scheme: str) -> int:
        """Largest k such that giving ``scheme`` to candidates[:k] keeps ``plan`` in target (binary search)."""
        lo, hi, best = 1, len(candidates), 0
        while lo <= hi:
            k = (lo + hi) // 2
            if self.fits({**plan, **{c: scheme for c in candidates[:k]}}, f"{scheme}{k}"):
                best, lo = k, k + 1
            else:
                hi = k - 1
        return best


def search_plan(fp32: onnx.ModelProto, cal: Calibration, cfg: ExportConfig, tokenizer_json: str,
                max_length: int, cache: dict | None = None, start_only: bool = False) -> PlanSearch | None:
    """The *plan* stage: ``cfg.start_plan`` if it names this graph's MatMuls and fits the search
    target, else the fastest per-MatMul plan whose calibration error stays inside it.

    Every MatMul starts on the int8-weight scheme ``cfg.weight_only`` when that fits (a quarter of
    the weight bytes; ``dequant`` computes in fp32, so it is fp32 speed on every CPU), else on
    ``fp32``. Each MatMul's sensitivity is measured alone (as ``token``); in that order, the least
    sensitive ones take the first of ``cfg.integer_schemes`` (default ``token``: one integer GEMM,
    0.36-0.67x the fp32 MatMul's time on VNNI CPUs, 0.96-1.19x on AVX2-only ones) for as long as the
    whole plan stays inside the search target (binary search over the order), then the next scheme
    the same way (``token2``: two integer GEMMs, ~1.9-2.3x fp32 time on AVX2, so not tried by
    default), and from an fp32 start the least sensitive of what is left take ``cfg.weight_only``.
    With ``weight_only="auto"`` and a VNNI target, what is left on dequant then moves to block,
    least sensitive first, as many as keep the plan inside the target (binary search; the rest
    stays dequant). ``cfg`` must be resolved (:func:`~rewardrt.export.config.resolve_target`).
    ``start_only``: check the start plan only; None instead of a search when it does not fit."""
    start = time.time()
    trials = _Trials(fp32, cal, cfg, tokenizer_json, max_length, {} if cache is None else cache)
    sites = [s.name for s in quantize.quantizable_matmuls(fp32)]

    def found(schemes: dict[str, str], start_scheme: str, **how) -> PlanSearch:
        return PlanSearch(trials.base.with_schemes(schemes), trials.target, start_scheme,
                          time.time() - start, **how)

    if cfg.start_plan is not None:
        if set(cfg.start_plan) == set(sites) and trials.fits(cfg.start_plan, "start"):
            log.info("the start plan fits the search target: no search")
            return found(dict(cfg.start_plan), "start plan", start_plan_fits=True)
        log.info("the start plan %s; searching", "is over the search target" if set(cfg.start_plan) == set(sites)
                 else "names other MatMuls than this graph's")
    if start_only:
        return None
    # int8 weights everywhere if that fits (small file); otherwise fp32 where it does not
    weight_only = cfg.search_weight_only
    all_fit = trials.fits({s: weight_only for s in sites}, f"{weight_only}-all")
    start_scheme = weight_only if all_fit else "fp32"
    plan = {s: start_scheme for s in sites}
    steps = cfg.integer_schemes + (() if all_fit else (weight_only,))
    if not steps:
        return found(plan, start_scheme)
    # ranking the MatMuls needs fewer pairs than the target: an evenly spaced subset (long pairs too)
    pick = np.unique(np.linspace(0, len(cal.pairs) - 1, min(len(cal.pairs), cfg.sensitivity_size)).astype(int))
    ref = np.clip(cal.reference_raw[pick], 0, 1)
    sensitivity = {s: float(np.mean(np.abs(np.clip(trials.scores({s: "token"}, "one", pick), 0, 1) - ref)))
                   for s in sites}
    order = sorted(sites, key=lambda s: sensitivity[s])
    rest = order
    for scheme in steps:
        if not rest:
            break
        k = trials.longest_prefix(plan, rest, scheme)
        plan.update({c: scheme for c in rest[:k]})
        rest = rest[k:]
    # what the search left on dequant, least sensitive first: as many as keep the plan in target
    # move to block (binary search, like the integer schemes)
    leftovers = [s for s in order if plan[s] == "dequant"]
    tried = cfg.leftovers_to_block and bool(leftovers)
    moved = trials.longest_prefix(plan, leftovers, "block") if tried else 0
    plan.update({s: "block" for s in leftovers[:moved]})
    return found(plan, start_scheme, sensitivity=sensitivity,
                 leftovers_to_block=f"moved {moved} of {len(leftovers)}" if tried else "not tried")


def recorded_plan(source: str | Path, target: str | None = None) -> dict[str, str] | None:
    """The INT8 plan an artifact records; ``"default"``: the embedded default artifact's for
    ``target`` when this build carries one (the VNNI artifact's plan for an avx512-vnni export),
    else the portable one's (None when this build carries none). None for an artifact without a
    plan (fp32)."""
    from rewardrt.runtime.spec import KEY_SPEC

    if source == "default":
        from rewardrt.models import DEFAULT_ARTIFACTS, default_model_path

        path = default_model_path()
        if target in DEFAULT_ARTIFACTS and default_model_path(target).is_file():
            path = default_model_path(target)
        if not path.is_file():
            return None
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"start plan artifact {str(path)!r} does not exist")
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if KEY_SPEC not in meta:
        return None
    record = ArtifactSpec.from_json(meta[KEY_SPEC]).quantization
    return dict(record.plan) if record is not None else None


def adapted_plan(plan: dict[str, str] | None, cfg: ExportConfig) -> dict[str, str] | None:
    """``plan`` within what ``cfg`` allows: an integer scheme it does not try, and ``block`` where
    the export would not use it (a portable AVX2 artifact keeps ``dequant``: ``block`` is ~2.5x
    slower there), become the scheme its search starts from."""
    if plan is None:
        return None
    allowed = set(cfg.integer_schemes) | {"fp32", cfg.search_weight_only}
    if cfg.leftovers_to_block or cfg.weight_only == "block":
        allowed.add("block")
    return {name: scheme if scheme in allowed else cfg.search_weight_only for name, scheme in plan.items()}


def gate_fallbacks(plan: dict[str, str], sensitivity: dict[str, float], retries: int,
                   start_scheme: str, weight_only: str) -> list[dict[str, str]]:
    """Plans to verify, in order, if the held-out gate rejects ``plan``: its integer-GEMM MatMuls
    cut in ``retries`` even steps down to none (4: 3/4, 1/2, 1/4, none of them; the most sensitive
    leave first, by ``sensitivity``; a step that would keep as many as the one before is skipped).
    A MatMul that leaves goes back to the scheme the search started from (``start_scheme``); from
    an fp32 start, to ``weight_only`` if the plan uses it (less sensitive MatMuls than those took
    it), else to fp32.

    The calibration pairs come from the training file, where a trained model's scores sit further
    from 0.5 than on held-out pairs, so a plan can fit its search target and still flip too many
    held-out pairs; the gate then picks among these nested plans (at most ``retries`` more looks at
    the held-out pairs). A plan whose ``block`` MatMuls the search moved there from dequant
    (``weight_only`` "dequant": the ``auto`` setting) ends the list with them back on dequant, one
    look more."""
    integer = sorted((s for s, x in plan.items() if x in quantize.INTEGER_SCHEMES),
                     key=lambda s: (sensitivity.get(s, 0.0), s))
    leave = start_scheme if start_scheme != "fp32" or weight_only not in plan.values() else weight_only
    out: list[dict[str, str]] = []
    last = len(integer)
    for i in range(1, retries + 1):
        keep = len(integer) * (retries - i) // retries
        if keep < last:
            out.append({**plan, **{s: leave for s in integer[keep:]}})
            last = keep
    # ``block`` quantizes its activations too (int8 per block of each row), so when the search moved
    # its leftovers there from dequant (weight_only "auto"), the last plan takes them back
    final = out[-1] if out else plan
    if retries and weight_only == "dequant" and "block" in final.values():
        out.append({s: "dequant" if x == "block" else x for s, x in final.items()})
    return out
