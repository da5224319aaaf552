"""The INT8 export's four stages, each called alone on the tiny random BERT: fit (calibration
statistics), plan (start plan or search), quantize (the graph rewritten by a QuantPlan), gate (the
written file against the torch reference on held-out pairs)."""

from __future__ import annotations

import collections
from dataclasses import replace

import numpy as np
import pytest
from onnx import TensorProto

from rewardrt.export.config import ExportConfig, FidelityBudget
from rewardrt.export.errors import FidelityError
from rewardrt.export.fit import fit, reference_raw
from rewardrt.export.gate import HeldOut, gate, runtime_scores
from rewardrt.export.pairs import calibration_pairs, load_pair_set, validation_pairs
from rewardrt.export.quantize import QuantPlan, quantizable_matmuls, quantize
from rewardrt.export.search import search_plan

MAX_LENGTH = 512  # the torch reference fixture's: trials and reference must truncate alike


@pytest.fixture(scope="module")
def calibration(fused, tiny_reference):
    model, tokenizer_json = fused
    return fit(model, calibration_pairs(load_pair_set(), 24), tiny_reference, tokenizer_json, MAX_LENGTH)


def _ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def test_fit_gives_reference_scores_and_per_matmul_statistics(fused, calibration, tiny_reference):
    model, _ = fused
    cal = calibration
    sites = {s.name: s for s in quantizable_matmuls(model)}
    assert len(sites) == 6 * 2 and set(cal.stats.absmax) == set(sites) == set(cal.stats.hessian)
    for name, site in sites.items():
        assert cal.stats.absmax[name].shape == (site.k,) and (cal.stats.absmax[name] >= 0).all()
        h = cal.stats.hessian[name]
        assert h.shape == (site.k, site.k) and np.allclose(h, h.T) and (np.diag(h) >= 0).all()
    # Q, K and V read one tensor: one set of statistics
    by_input = collections.defaultdict(list)
    for node in model.graph.node:
        if node.name in sites:
            by_input[node.input[0]].append(node.name)
    qkv = max(by_input.values(), key=len)
    assert len(qkv) == 3 and all(cal.stats.absmax[n] is cal.stats.absmax[qkv[0]] for n in qkv)
    # reference scores in input order, whatever order they were batched in
    pairs = cal.pairs
    direct = np.array(tiny_reference.raw_scores(pairs.responses, pairs.references))
    assert cal.reference_raw.shape == (len(pairs),) and np.abs(cal.reference_raw - direct).max() <= 1e-5


def test_quantize_rewrites_a_copy_by_the_plan(fused, calibration):
    model, _ = fused
    before = model.SerializeToString()
    names = [s.name for s in quantizable_matmuls(model)]
    schemes = {n: "token" for n in names[:4]} | {n: "dequant" for n in names[4:]}
    plan = QuantPlan(schemes, activation_bits=7, smooth_alpha=0.5, outlier_channels=8)
    q = quantize(model, plan, calibration.stats, {})
    assert model.SerializeToString() == before  # the fp32 graph every plan starts from is untouched
    ops = _ops(q)
    fused_away = sum(len(n.output) - 1 for n in q.graph.node if n.op_type == "Split" and ".fused" in n.name)
    assert ops["MatMulIntegerToFloat"] + fused_away == 4 and ops["MatMul"] >= len(names) - 4
    assert _ops(quantize(model, plan, calibration.stats, {}, compact=False))["MatMulIntegerToFloat"] == 4
    assert sum(n.name.endswith((".WeightDequant", ".WeightCast")) for n in q.graph.node) == len(names) - 4
    tables = {t.name: t.data_type for t in q.graph.initializer if t.dims and t.dims[0] == 30522}
    assert list(tables.values()) == [TensorProto.FLOAT16]  # the word embeddings, float16 by default
    q8 = quantize(model, replace(plan, embedding_table="int8"), calibration.stats, {})
    assert [t.data_type for t in q8.graph.initializer if t.dims and t.dims[0] == 30522] == [
        TensorProto.INT8, TensorProto.FLOAT]  # int8 rows and their scales
    assert plan.counts == {"token": 4, "dequant": len(names) - 4}
    assert QuantPlan(schemes).schemes == schemes and QuantPlan(schemes).schemes is not schemes
    with pytest.raises(TypeError, match="QuantPlan"):
        quantize(model, schemes)  # one typed options object, not a dict
    with pytest.raises(ValueError, match="not in the graph"):
        quantize(model, QuantPlan({"nope": "token"}))


def test_plan_searches_then_keeps_a_start_plan_that_fits(fused, calibration):
    model, tokenizer_json = fused
    cfg = ExportConfig.avx2(calibration_size=24, sensitivity_size=8, start_from=None)
    found = search_plan(model, calibration, cfg, tokenizer_json, MAX_LENGTH)
    sites = {s.name for s in quantizable_matmuls(model)}
    assert set(found.plan.schemes) == sites and set(found.plan.counts) <= {"token", "dequant", "fp32"}
    assert found.plan.activation_bits == 7 and not found.start_plan_fits
    assert set(found.sensitivity) == sites and found.leftovers_to_block == "not tried"  # AVX2: no block
    assert found.plan.counts.get("token", 0) > 0  # the tiny model leaves room for integer GEMMs
    ladder = found.fallbacks(cfg)
    assert len(ladder) == cfg.gate_retries and ladder[-1].counts.get("token", 0) == 0
    assert all(p.counts.get("token", 0) < found.plan.counts.get("token", 0) for p in ladder)
    again = search_plan(model, calibration, ExportConfig.avx2(start_plan=dict(found.plan.schemes)),
                        tokenizer_json, MAX_LENGTH)
    assert again.start_plan_fits and again.plan == found.plan and again.fallbacks(cfg) == []
    assert again.record_entries()["search"] == "start plan fits"
    with pytest.raises(ValueError, match="resolve_target"):
        search_plan(model, calibration, ExportConfig(), tokenizer_json, MAX_LENGTH)


def test_gate_passes_within_budget_and_raises_over_it(tiny_int8, tiny_fp32, tiny_reference):
    pairs = validation_pairs(load_pair_set(), 40)
    held = HeldOut(pairs, reference_raw(tiny_reference, pairs), "40 test pairs")
    verdict = gate(tiny_int8[0], held, FidelityBudget(), "int8")
    assert verdict.passed and verdict.fidelity.mean_abs_diff <= 0.01
    impossible = FidelityBudget(max_mean_abs=0.0, max_abs=0.0, min_spearman=1.0, min_agreement=1.0)
    with pytest.raises(FidelityError, match="over its fidelity budget") as info:
        gate(tiny_int8[0], held, impossible, "int8")
    assert not info.value.report.passed and info.value.report.failures
    worst = info.value.report.worst  # the pair that sets max|Δ|, named in the message
    assert worst.startswith("reference ") and ", response " in worst and "largest on " + worst in str(info.value)
    i = int(np.argmax(np.abs(np.clip(held.reference_raw, 0, 1)
                             - np.clip(runtime_scores(tiny_int8[0], pairs, None), 0, 1))))
    assert repr(pairs.responses[i][-60:])[1:-1] in worst
    assert gate(tiny_fp32[0], held, impossible, "fp32").max_raw_abs_diff <= 1e-4  # fp32: raw scores rule
    shifted = HeldOut(pairs, held.reference_raw + 1e-3, "shifted")
    with pytest.raises(FidelityError, match=r"raw max\|Δ\|"):
        gate(tiny_fp32[0], shifted, FidelityBudget(), "fp32")


def test_a_start_plan_the_gate_rejects_at_8_bits_is_tried_at_7_before_a_search(fused, calibration, monkeypatch):
    """The plans the gate sees, in order: the kept start plan at 8 bits, the same plan at 7 (when it
    fits the search target at 7), then a search, then its fallbacks."""
    from dataclasses import replace

    from rewardrt.export import exporter, search
    from rewardrt.export.config import resolve_target

    model, tokenizer_json = fused
    sites = [s.name for s in quantizable_matmuls(model)]
    start = {s: ("token" if i % 2 else "dequant") for i, s in enumerate(sites)}
    cfg = resolve_target(ExportConfig(target="avx512-vnni", start_plan=start))
    wide = replace(cfg.budget, max_abs=1.0, max_mean_abs=1.0, min_spearman=-1.0, min_agreement=0.0)
    cfg = replace(cfg, budget=wide)  # every plan fits the search target: the order is what is tested
    calls = []
    real = search.search_plan

    def spy(fp32, cal, c, *args, **kw):
        calls.append((c.bits, c.start_plan is not None, kw.get("start_only", False)))
        return real(fp32, cal, c, *args, **kw)

    monkeypatch.setattr(exporter, "search_plan", spy)
    plans = exporter._plans(model, calibration, cfg, tokenizer_json, MAX_LENGTH, {}, exporter.Stages())
    first, _ = next(plans)
    second, how = next(plans)
    assert (first.activation_bits, dict(first.schemes)) == (8, start)
    assert (second.activation_bits, dict(second.schemes)) == (7, start) and how.start_plan_fits
    third, _ = next(plans)  # the search (at the target's 8 bits)
    assert third.activation_bits == 8
    assert calls == [(8, True, False), (7, True, True), (8, False, False)]
    other = replace(cfg, start_plan={"not/this/graph": "token"})
    assert search.search_plan(model, calibration, other, tokenizer_json, MAX_LENGTH, start_only=True) is None
