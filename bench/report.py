"""results.json -> results.md (Markdown tables) and PNG plots. Every number printed here comes from
the results dictionary; nothing is typed by hand."""

from __future__ import annotations

import math
from pathlib import Path

from rewardrt.bench.engines import BY_NAME, CT2, HOST_INT8, OPENVINO, REFERENCE

PLOTS = {"latency": "latency.png", "throughput": "throughput.png", "fidelity": "fidelity.png"}
MB = 1e6


def _x(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.2f}×"


def _pct(v: float) -> str:
    return "–" if v is None or math.isnan(v) else f"{100 * v:.0f}%"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _label(engine: str) -> str:
    return BY_NAME[engine].label if engine in BY_NAME else engine


OVER_BUDGET_MARK = " ✗"  # after the label of an engine whose fidelity is outside rewardrt's budget


def over_budget(results: dict) -> dict[str, list[str]]:
    """Engine -> what of rewardrt's INT8 fidelity budget (the export gate's default
    ``FidelityBudget``: mean |Δ| ≤ 0.01, max |Δ| ≤ 0.05, Spearman ≥ 0.995, ≥ 99% same side of 0.5)
    its scores on the bench's fidelity pairs break; engines inside it are left out."""
    from rewardrt.export.config import FidelityBudget
    from rewardrt.runtime.metrics import Fidelity

    budget = FidelityBudget()
    out = {}
    for row in results.get("fidelity", []):
        spearman = row["spearman"] if row["spearman"] is not None else float("nan")
        fails = budget.failures(Fidelity(row["n"], row["max_abs_diff"], row["mean_abs_diff"], spearman,
                                         row["agreement_at_half"]))
        if fails:
            out[row["engine"]] = fails
    return out


def _marked(engine: str, over: dict[str, list[str]]) -> str:
    return _label(engine) + (OVER_BUDGET_MARK if engine in over else "")


def budget_note(results: dict) -> list[str]:
    over = over_budget(results)
    lines = []
    if over:
        lines += [f"{OVER_BUDGET_MARK.strip()} outside rewardrt's fidelity budget on the bench's fidelity pairs "
                  "(mean |Δ| ≤ 0.01, max |Δ| ≤ 0.05, Spearman ≥ 0.995, ≥ 99% on the same side of 0.5): "
                  + "; ".join(f"{_label(e)}: {', '.join(f)}" for e, f in over.items()) + ".", ""]
    for engine, why in (results.get("skipped_engines") or {}).items():
        lines += [f"Not measured: {_label(engine)} ({why}).", ""]
    return lines


def summary_table(results: dict) -> list[str]:
    """Engines x headline ratios: the table we quote."""
    threads = results["conditions"]["threads"]
    tokens = 128 if 128 in results["plan"]["lengths"] else results["plan"]["lengths"][-1]
    # batch-1 on ordinary dev pairs (the target's definition) when the run has it, else N tokens
    dev = bool(results.get("latency_dev"))
    batch = max(results["plan"]["batches"])
    head = ["engine"]
    for t in threads:
        head += [f"batch-1 dev pairs, {t}t" if dev else f"latency {tokens} tok, {t}t",
                 f"throughput b{batch}, {t}t", f"RL mixed, {t}t"]
    head += ["cold start", "peak RSS", "installed", "model file", "fidelity"]
    over = over_budget(results)
    rows = []
    for engine in results["engines"]:
        r = results["ratios"][engine]
        cells = [_marked(engine, over)]
        for t in threads:
            latency = r.get(f"latency_dev_speedup_{t}t") if dev else r.get(f"latency_speedup_{tokens}tok_{t}t")
            cells += [_x(latency), _x(r.get(f"throughput_speedup_b{batch}_{t}t")),
                      _x(r.get(f"rl_speedup_{t}t"))]
        cells += [_x(r.get("cold_start_speedup")), _pct(r.get("peak_rss_fraction")),
                  _pct(r.get("installed_size_fraction")), _pct(r.get("model_file_fraction")),
                  "reference" if engine == REFERENCE else ("over budget" if engine in over else "in budget")]
        rows.append(cells)
    return _table(head, rows) + budget_note(results)


def markdown(results: dict) -> str:
    c = results["conditions"]
    cpu = c["cpu"]
    lines = [f"# rewardrt bench ({results['mode']})", "",
             f"Run {results['started']} in {results['duration_s']:.0f} s; commit {c['git']['commit'][:12]}"
             + (" (with local changes)" if c["git"].get("dirty") else "") + ".", "",
             f"Model: {results['checkpoint']['note']} (digest {results['checkpoint']['digest'][:12]}).", "",
             "Speed columns are speedups over the PyTorch reference (higher is better: median over "
             "alternating rounds of the per-round ratio); memory and size columns are percentages of "
             "the reference (lower is better).", ""]
    lines += ["## Ratios to the PyTorch reference", ""] + summary_table(results)

    lines += ["## Conditions", ""]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none"
    lines += _table(["", ""], [
        ["CPU", f"{cpu['model']} ({cpu['machine']})"],
        ["int8 dot product", cpu["int8_dot_product"]],
        ["SIMD flags", flags],
        ["cores", f"{cpu['cores_available']} available, {cpu['logical_cores']} logical, "
                  f"{cpu['physical_cores']} physical"],
        ["threads", ", ".join(map(str, c["threads"])) + " (torch.set_num_threads / ORT intra-op threads)"],
        ["platform", c["platform"]],
        ["versions", ", ".join(f"{k} {v}" for k, v in c["versions"].items())],
    ])
    lines += ["## Engines", ""]
    lines += _table(["engine", "what runs", "model files"], [
        [_label(e), BY_NAME[e].how, ", ".join(Path(p).name for p in info["model_files"])]
        for e, info in results["engines"].items()])
    lines += [f"Not measured: {_label(e)} ({why})." for e, why in (results.get("skipped_engines") or {}).items()]
    lines += [""] if results.get("skipped_engines") else []

    lines += ["## Batch-1 latency", "", "One pair per call, `reference [SEP] response` of exactly N "
              "tokens; milliseconds over all calls of all rounds.", "", f"![latency]({PLOTS['latency']})", ""]
    lines += _table(["threads", "tokens", "engine", "p50 ms", "p90 ms", "p99 ms", "calls", "speedup (p50)"], [
        [str(r["threads"]), str(r["tokens"]), _label(r["engine"]), f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}",
         f"{r['p99_ms']:.1f}", str(r["n"]), _x(r["speedup"])] for r in results["latency"]])

    w = results["workloads"]
    if results.get("latency_dev"):
        info = w["latency-dev"]
        lines += ["## Batch-1 latency, ordinary dev pairs", "",
                  f"{info['pairs']} dev pairs of {info['token_window'][0]}–{info['token_window'][1]} tokens "
                  f"(median {info['tokens_median']}, mean {info['tokens_mean']:.1f}), one pair per call, each "
                  "at its own length; milliseconds over all calls of all rounds, speedup = median over "
                  "rounds of the per-round p50 ratio.", ""]
        lines += _table(["threads", "engine", "p50 ms", "p90 ms", "p99 ms", "calls", "speedup (p50)"], [
            [str(r["threads"]), _label(r["engine"]), f"{r['p50_ms']:.1f}", f"{r['p90_ms']:.1f}",
             f"{r['p99_ms']:.1f}", str(r["n"]), _x(r["speedup"])] for r in results["latency_dev"]])
    lines += ["## Throughput", "", f"{w['pairs']['pairs']} dev pairs (mean {w['pairs']['mean_tokens']:.0f} "
              "tokens) scored in calls of the caller's batch size; pairs per second, median over rounds "
              "(speedup).", "", f"![throughput]({PLOTS['throughput']})", ""]
    batches = results["plan"]["batches"]
    rows = []
    for t in c["threads"]:
        for engine in results["engines"]:
            cells = [str(t), _label(engine)]
            for b in batches:
                row = next(r for r in results["throughput"] if r["threads"] == t and r["batch"] == b
                           and r["engine"] == engine)
                cells.append(f"{row['pairs_per_s']:.1f} ({_x(row['speedup'])})")
            rows.append(cells)
    lines += _table(["threads", "engine", *(f"batch {b}" for b in batches)], rows)

    rl = w["rl"]
    lines += ["## Mixed-length RL workload", "",
              f"GRPO-like steps of {rl['groups_per_step']} groups x {rl['group_size']} samples sharing a "
              f"short reference; response lengths {rl['response_tokens_min']}–{rl['response_tokens_max']} "
              f"tokens (median {rl['response_tokens_median']}), shuffled; one `batch_score` call per "
              "step (batch_size 64).", ""]
    lines += _table(["threads", "engine", "pairs/s", "speedup"], [
        [str(r["threads"]), _label(r["engine"]), f"{r['pairs_per_s']:.1f}", _x(r["speedup"])]
        for r in results["rl"]])

    lines += ["## Cold start, memory and size", "",
              "Cold start: wall time of a fresh process that imports the engine, loads the model and "
              "scores one pair. Peak RSS: the worker's high-water RSS (VmHWM) after every workload above and the fidelity sets; one pair: the same in the cold-start process. Installed: "
              "the files of every distribution the engine needs at run time (requirements followed "
              "transitively).", ""]
    cold = {r["engine"]: r for r in results["cold_start"]}
    rows = []
    for engine, info in results["engines"].items():
        rows.append([_label(engine), f"{cold[engine]['seconds']:.2f}", _x(cold[engine]["speedup"]),
                     f"{info['peak_rss'] / MB:.0f}", _pct(info["peak_rss_fraction"]),
                     f"{cold[engine]['peak_rss_one_pair'] / MB:.0f}",
                     f"{info['installed_bytes'] / MB:.0f}", _pct(info["installed_fraction"]),
                     f"{info['model_bytes'] / MB:.1f}", _pct(info["model_fraction"])])
    lines += _table(["engine", "cold start s", "speedup", "peak RSS MB", "of ref", "RSS one pair MB",
                     "installed MB", "of ref", "model MB", "of ref"], rows)

    lines += profile_section(results)
    lines += ["## Fidelity against the reference", "",
              f"{w['fidelity']['pairs']} dev pairs, clamped scores.", "", f"![fidelity]({PLOTS['fidelity']})", ""]
    over = over_budget(results)
    lines += _table(["engine", "pairs", "max abs Δ", "mean abs Δ", "Spearman", "agreement at 0.5"], [
        [_marked(r["engine"], over), str(r["n"]), f"{r['max_abs_diff']:.4f}", f"{r['mean_abs_diff']:.4f}",
         f"{r['spearman']:.4f}", f"{100 * r['agreement_at_half']:.1f}%"] for r in results["fidelity"]])

    swap_engines = list(dict.fromkeys(r["engine"] for r in results["swap"]))
    lines += ["## One-word swaps", "", "score(s, s) − score(s, edit(s)) on dev sentences: mean drop, and "
              "share of drops above 0.15 (synonym is the control: it should not drop).", ""]
    rows = []
    for probe, n in w["swap"]["probes"].items():
        cells = [f"{probe} (n={n})"]
        for e in swap_engines:
            row = next((r for r in results["swap"] if r["engine"] == e and r["probe"] == probe), None)
            cells.append("–" if row is None else f"{row['mean_drop']:.3f} / {100 * row['noticed']:.0f}%")
        rows.append(cells)
    lines += _table(["probe", *(_label(e) for e in swap_engines)], rows)

    lines += ["## Artifacts", "", "Built in this run, reused from the cache in the results folder, or the "
              "packaged default; for rewardrt, the MatMul plan and the fidelity its own export gate measured.", ""]
    rows = []
    for e, info in results["engines"].items():
        if not info.get("export"):
            continue
        built = ", ".join(f"{k} {Path(v).name}" if k in ("cached", "packaged") else f"{k} {v}"
                          for k, v in info["export"].items() if k != "plan")
        facts = info.get("artifact") or {}
        plan = ", ".join(f"{k}={v}" for k, v in sorted((facts.get("plan_counts") or {}).items())) or "–"
        fid = facts.get("export_fidelity") or {}
        gate = (f"n={fid['n']}, mean abs Δ {fid['mean_abs_diff']:.4f}, max abs Δ {fid['max_abs_diff']:.4f}"
                if fid.get("n") else "–")
        rows.append([_label(e), built, plan, gate])
    lines += _table(["engine", "built", "MatMul plan", "export gate"], rows)
    return "\n".join(lines)


def _op_rows(cases: dict, names: list[str], min_share: float = 0.005) -> list[list[str]]:
    """Op types x cases: share of kernel time and ms per call; small op types pooled as "other"."""
    shares: dict[str, float] = {}
    for name in names:
        for o in cases[name]["ops"]:
            shares[o["op"]] = max(shares.get(o["op"], 0.0), o["share"])
    shown = [op for op, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v >= min_share]
    rows = []
    for op in shown + ["other op types"]:
        cells = [op]
        for name in names:
            ops = cases[name]["ops"]
            sel = [o for o in ops if (o["op"] == op if op in shown else o["op"] not in shown)]
            share = sum(o["share"] for o in sel)
            ms = sum(o["ms_per_call"] for o in sel)
            nodes = sum(o["nodes_per_call"] for o in sel)
            cells += [f"{100 * share:.1f}%", f"{ms:.3f}", f"{nodes:g}"]
        rows.append(cells)
    return rows


def profile_section(results: dict) -> list[str]:
    """onnxruntime's per-op profile of rewardrt INT8, and its integer throughput against the peak."""
    prof = results.get("profile")
    if not prof or not prof.get("by_threads"):
        return []
    lines = ["## Where the time goes (rewardrt INT8)", "",
             f"onnxruntime's profiler on {_label(prof['engine'])}, ordinary dev pairs (20–80 tokens), the "
             "runtime's own session settings; share of kernel time per op type, milliseconds per call, "
             "nodes per call. The first calls of each case are left out (warm-up).", ""]
    for t, p in prof["by_threads"].items():
        cases = p["cases"]
        names = list(cases)
        desc = "; ".join(f"{n}: {c['calls']} calls, {c['padded_tokens']:.0f} padded tokens, "
                         f"{c['run_ms']:.2f} ms per call of which {c['kernel_ms']:.2f} ms in kernels, "
                         f"{sum(o['nodes_per_call'] for o in c['ops']):g} nodes run per call"
                         for n, c in cases.items())
        if p.get("graph_nodes"):
            desc += f"; the graph as written has {p['graph_nodes']} nodes"
        lines += [f"{t} thread(s) — {desc}.", ""]
        head = ["op type"] + [f"{n} {col}" for n in names for col in ("share", "ms", "nodes")]
        lines += _table(head, _op_rows(cases, names))
    eff = results.get("int8_efficiency") or []
    peak = results.get("int8_peak") or {}
    if peak.get("rows"):
        shp = peak["shape"]
        lines += ["## INT8 throughput against the machine's peak", "",
                  f"Peak: one uint8 × int8 GEMM [{shp['m']}×{shp['k']}]·[{shp['k']}×{shp['n']}] in onnxruntime "
                  "(bench/probes/int8peak.py), 2·M·K·N per call, best of the timed calls (median in brackets). "
                  "Integer GEMMs: the artifact's `token`-scheme MatMuls (MatMulIntegerToFloat), their "
                  "2·M·K·N over their own kernel time at batch 32. Encoder effective: 2·M·K·N of every "
                  "dense-layer GEMM, whatever its scheme (attention's own products not counted), over "
                  "the whole call at batch 32.", ""]
        lines += _table(["op", "threads", "peak GOPS"], [
            [r["op"], str(r["threads"]), f"{r['best_gops']:.0f} ({r['median_gops']:.0f})"] for r in peak["rows"]])

        def g(v):
            return "–" if v is None else f"{v:.0f}"

        lines += _table(["threads", "peak GOPS", "integer GEMMs GOPS, best call", "of peak",
                         "integer GEMMs GOPS, all calls", "of peak", "their share of the call",
                         "encoder effective GOPS", "of peak"], [
            [str(r["threads"]), g(r["peak_gops"]), g(r.get("integer_gemm_best_gops")),
             _pct(r.get("integer_gemm_best_of_peak")), g(r["integer_gemm_gops"]), _pct(r["integer_gemm_of_peak"]),
             _pct(r["integer_gemm_share_of_call"]), g(r["encoder_effective_gops"]),
             _pct(r["encoder_effective_of_peak"])] for r in eff])
    return lines


def _figure(width: float, height: float, cols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg on savefig

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def plot_latency(results: dict, path: Path) -> None:
    threads = results["conditions"]["threads"]
    over = over_budget(results)  # dotted lines, marked labels
    fig, axes = _figure(5.5 * len(threads), 4.2, len(threads))
    for ax, t in zip(axes, threads):
        for engine in results["engines"]:
            rows = sorted((r for r in results["latency"] if r["threads"] == t and r["engine"] == engine),
                          key=lambda r: r["tokens"])
            ax.plot([r["tokens"] for r in rows], [r["p50_ms"] for r in rows], marker="o",
                    label=_marked(engine, over), linewidth=2.5 if engine == REFERENCE else 1.5,
                    linestyle=":" if engine in over else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(results["plan"]["lengths"], [str(n) for n in results["plan"]["lengths"]])
        ax.set_xlabel("tokens (reference [SEP] response)")
        ax.set_ylabel("batch-1 latency p50 (ms)")
        ax.set_title(f"{t} thread(s)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    fig.savefig(path, dpi=110)


def plot_throughput(results: dict, path: Path) -> None:
    """Speedups over the reference (the figures we quote) on one scale; pairs/s are in the tables."""
    threads = results["conditions"]["threads"]
    engines = list(results["engines"])
    groups = [f"batch {b}" for b in results["plan"]["batches"]] + ["RL mixed"]
    over = over_budget(results)  # hatched bars, marked labels
    fig, axes = _figure(6.5 * len(threads), 4.6, len(threads))
    width = 0.8 / len(engines)
    for ax, t in zip(axes, threads):
        for i, engine in enumerate(engines):
            values = [next(r["speedup"] for r in results["throughput"]
                           if r["threads"] == t and r["batch"] == b and r["engine"] == engine)
                      for b in results["plan"]["batches"]]
            values.append(next(r["speedup"] for r in results["rl"] if r["threads"] == t and r["engine"] == engine))
            ax.bar([g + (i - (len(engines) - 1) / 2) * width for g in range(len(groups))], values, width,
                   label=_marked(engine, over), hatch="//" if engine in over else None)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_ylabel("throughput speedup over the PyTorch reference")
        ax.set_title(f"{t} thread(s)")
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8)
    fig.savefig(path, dpi=110)


def plot_fidelity(results: dict, scores: dict[str, list[float]], path: Path) -> None:
    """Top: INT8 score against the reference's; bottom: their difference, magnified."""
    import numpy as np

    int8 = [e for e in ("rewardrt-int8", HOST_INT8, "ort-int8", "torch-dynq", CT2, OPENVINO) if e in scores]
    over = over_budget(results)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(int8), 8.0), layout="constrained")
    axes = fig.subplots(2, len(int8), squeeze=False)
    ref = np.asarray(scores[REFERENCE])
    for col, engine in enumerate(int8):
        top, bottom = axes[0][col], axes[1][col]
        values = np.asarray(scores[engine])
        row = next(r for r in results["fidelity"] if r["engine"] == engine)
        top.scatter(ref, values, s=6, alpha=0.5)
        top.plot([0, 1], [0, 1], color="black", linewidth=0.8)
        top.set_title(f"{_marked(engine, over)}\nmean|Δ| {row['mean_abs_diff']:.4f}, max|Δ| "
                      f"{row['max_abs_diff']:.3f}, Spearman {row['spearman']:.4f}"
                      + ("\noutside the fidelity budget" if engine in over else ""), fontsize=9)
        top.set_xlabel("PyTorch reference score")
        top.set_ylabel("engine's score")
        top.set_xlim(-0.02, 1.02)
        top.set_ylim(-0.02, 1.02)
        bottom.scatter(ref, values - ref, s=6, alpha=0.5)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        bottom.set_xlabel("PyTorch reference score")
        bottom.set_ylabel("engine − reference")
        bottom.set_xlim(-0.02, 1.02)
    fig.savefig(path, dpi=110)


def write(results: dict, fidelity_scores: dict[str, list[float]], out: Path) -> dict[str, Path]:
    paths = {"md": out / "results.md", **{k: out / v for k, v in PLOTS.items()}}
    plot_latency(results, paths["latency"])
    plot_throughput(results, paths["throughput"])
    plot_fidelity(results, fidelity_scores, paths["fidelity"])
    paths["md"].write_text(markdown(results) + "\n", encoding="utf-8")
    return paths
