"""How fast a checkpoint's INT8 graph would be with *every* MatMul an integer GEMM: the batch-1
speed a model that quantizes well could reach, against the artifact ``RewardModel()`` loads here.

The checkpoint is exported with the fidelity budget opened wide, so the plan search puts every
MatMul on ``token`` whatever it does to the scores; the file is written to a temporary folder and
deleted. Its held-out fidelity is printed beside the timing, so it is plain how far out of budget
that speed is. Timing: ``RewardModel.score`` on ordinary held-out pairs of the bundled set (each at
its own length), both models loaded in one process, rounds alternating with the order rotating,
per model the median over rounds of the per-round median, and the ratio per round (median).

``python -m rewardrt.bench.probes.planbound CHECKPOINT [--target avx512-vnni] [--against M.onnx]
[--threads 1] [--rounds 7] [--pairs 48]`` (needs the ``export`` extra)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def all_integer_export(checkpoint: str, out: Path, target: str, threads: int):
    """``checkpoint`` exported with every MatMul on ``token`` (the budget opened wide)."""
    from rewardrt.export.config import ExportConfig, FidelityBudget
    from rewardrt.export.exporter import export

    wide = FidelityBudget(max_mean_abs=1.0, max_abs=1.0, min_spearman=-1.0, min_agreement=0.0)
    cfg = ExportConfig(target=target, budget=wide, start_from=None, threads=threads, gate_retries=0)
    report = export(checkpoint, out, cfg)
    not_integer = {k: v for k, v in report.plan.items() if k != "token"}
    if not_integer:
        raise RuntimeError(f"the wide-budget search left MatMuls off token: {not_integer}")
    return report


def time_batch1(paths: dict[str, Path], threads: int, rounds: int, pairs: int) -> dict[str, dict]:
    """Per model: median ms of a batch-1 ``score`` call and the ratio of the first model's time to its."""
    import onnx

    from rewardrt.bench.workloads import ORDINARY_TOKENS, read_dev
    from rewardrt.runtime.api import RewardModel
    from rewardrt.runtime.spec import spec_from_metadata
    from rewardrt.runtime.tokenizer import PairEncoder, load_tokenizer

    models = {k: RewardModel(p, threads=threads) for k, p in paths.items()}
    first = str(next(iter(paths.values())))
    meta = {m.key: m.value for m in onnx.load(first, load_external_data=False).metadata_props}
    spec, tokenizer_json = spec_from_metadata(meta, first)
    rows = read_dev()
    ids, _ = PairEncoder(load_tokenizer(tokenizer_json, first), spec.max_length)(
        [r["a"] for r in rows], [r["b"] for r in rows])
    rows = [r for r, x in zip(rows, ids) if ORDINARY_TOKENS[0] <= len(x) <= ORDINARY_TOKENS[1]][:pairs]
    names = list(models)
    for m in models.values():  # warm-up
        for r in rows[:8]:
            m.score(r["b"], r["a"])
    per_round: dict[str, list[float]] = {k: [] for k in names}
    for i in range(rounds):
        for k in names[i % len(names):] + names[: i % len(names)]:
            times = []
            for r in rows:
                t = time.perf_counter()
                models[k].score(r["b"], r["a"])
                times.append(time.perf_counter() - t)
            per_round[k].append(statistics.median(times) * 1000)
    base = per_round[names[0]]
    return {k: {"ms": statistics.median(v), "ratio": statistics.median(b / x for b, x in zip(base, v))}
            for k, v in per_round.items()}


def main(argv: list[str] | None = None) -> int:
    from rewardrt.export.config import FidelityBudget
    from rewardrt.runtime.api import select_default_model
    from rewardrt.runtime.clibase import integer

    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.probes.planbound",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an fp32 checkpoint folder (e.g. `rewardrt materialize`'s)")
    p.add_argument("--target", choices=["avx512-vnni", "avx2"], default="avx512-vnni")
    p.add_argument("--against", default=None, help="the artifact to compare with (default: what RewardModel() loads)")
    p.add_argument("--threads", type=integer(1), default=1)
    p.add_argument("--rounds", type=integer(1), default=7)
    p.add_argument("--pairs", type=integer(1), default=48, help="batch-1 calls per round and model")
    args = p.parse_args(argv)
    against = Path(args.against) if args.against else select_default_model()
    if not against.is_file():
        p.error(f"--against: {str(against)!r} is not a file")
    budget = FidelityBudget()
    with tempfile.TemporaryDirectory(prefix="rewardrt-planbound-") as tmp:
        out = Path(tmp) / "all-integer.onnx"
        report = all_integer_export(args.checkpoint, out, args.target, args.threads)
        f = report.fidelity
        print(f"all-integer ({args.target}): {report.plan}, {report.graph_nodes} nodes; held-out fidelity "
              f"n={f.n} mean|Δ|={f.mean_abs_diff:.4f} max|Δ|={f.max_abs_diff:.4f} spearman={f.spearman:.4f} "
              f"agree@0.5={100 * f.agreement_at_half:.2f}% (budget: mean {budget.max_mean_abs}, max "
              f"{budget.max_abs}, spearman {budget.min_spearman}, agree {100 * budget.min_agreement:.0f}%)")
        result = time_batch1({"against": against, "all-integer": out}, args.threads, args.rounds, args.pairs)
    for name, r in result.items():
        print(f"{name:12} batch-1 median {r['ms']:.3f} ms  speed vs against {r['ratio']:.2f}x")
    print(f"against: {against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
