"""``rewardrt crosscheck``: an independent side-by-side of upstream neural-txt and ``RewardModel``.

The bench measures against rewardrt's own copy of the torch scoring path
(``rewardrt.export.reference``), the same code the export is verified against, so a mistake there
would pass both. This check uses neither that copy nor the bench's engines and workers: the torch
side is upstream ``neuraltxt.NeuralTxtReward`` (neural-txt's own class, loaded from the checkpoint
folder), the other side is ``rewardrt.RewardModel`` on an artifact exported from that checkpoint.
Each engine runs in a fresh process per round, rounds alternate which goes first, and it measures:

* batch-1 latency: ``score()`` on ordinary dev pairs (20-80 tokens), each at its own length;
* RL throughput: GRPO-shaped steps of 64 samples (groups of 8 responses sharing a short reference,
  responses of one sentence to ~500 tokens), one ``batch_score(..., batch_size=64)`` per step;
* fidelity: every dev pair, both sides' scores, against the export's budget;
* batch independence: rewardrt's ``score()`` of pairs alone against the same pairs in a batch.

neural-txt's reward class needs only torch, transformers and pydantic; the package as a whole
pulls in a text-generation stack (outlines) it does not use here, so install it with
``pip install --no-deps neural-txt==0.1.7`` (``make setup`` does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

UPSTREAM, REWARDRT = "neural-txt", "rewardrt"
RL_BATCH = 64
INDEPENDENCE_PAIRS = 64
NEURALTXT_HINT = "pip install --no-deps neural-txt==0.1.7 (its reward class needs torch, transformers, pydantic)"


class WorkerFailed(RuntimeError):
    """An engine's process exited with an error; the message carries the end of its log."""


# --- worker: one engine, one round, in a process of its own -------------------------------------

def _load(job: dict):
    if job["engine"] == UPSTREAM:
        import torch

        try:
            from neuraltxt import NeuralTxtReward
        except ImportError as exc:
            raise ImportError(f"the upstream reference needs neural-txt: {NEURALTXT_HINT}") from exc
        torch.set_num_threads(job["threads"])
        return NeuralTxtReward(model_path=job["checkpoint"])
    from rewardrt import RewardModel

    return RewardModel(job["artifact"], threads=job["threads"])


def run_worker(job: dict) -> dict:
    """Time one engine on the job's sets; timings are taken around the engine calls only."""
    t0 = time.perf_counter()
    engine = _load(job)
    out: dict = {"engine": job["engine"], "load_s": time.perf_counter() - t0}
    lat = job["latency"]
    for ref, resp in list(zip(lat["refs"], lat["resps"]))[:3]:  # warm-up, untimed
        engine.score(resp, ref)
    engine.batch_score(lat["resps"][:16], lat["refs"][:16], batch_size=16)
    times = []
    for ref, resp in zip(lat["refs"], lat["resps"]):
        t = time.perf_counter()
        engine.score(resp, ref)
        times.append(time.perf_counter() - t)
    out["latency_s"] = times
    out["rl"] = []
    for step in job["rl"]:
        t = time.perf_counter()
        engine.batch_score(step["resps"], step["refs"], batch_size=RL_BATCH)
        out["rl"].append({"pairs": len(step["resps"]), "seconds": time.perf_counter() - t})
    if job.get("fidelity"):
        fid = job["fidelity"]
        scores = engine.batch_score(fid["resps"], fid["refs"], batch_size=RL_BATCH)
        out["fidelity_scores"] = [float(s) for s in scores]
        if job["engine"] == REWARDRT:
            alone = [engine.score(resp, ref) for ref, resp in
                     list(zip(fid["refs"], fid["resps"]))[:INDEPENDENCE_PAIRS]]
            out["alone_vs_batch_max_abs"] = max(abs(a - b) for a, b in zip(alone, scores))
    return out


# --- parent -------------------------------------------------------------------------------------

def _sets(checkpoint: Path, pairs_file: str | None, rl_steps: int, fidelity_pairs: int | None) -> dict:
    from rewardrt.bench.config import FULL
    from rewardrt.bench.workloads import LATENCY_DEV, TokenCounter, build, read_dev

    rows = read_dev(pairs_file)
    plan = replace(FULL, lengths=(32,), latency_calls=1, rl_steps=rl_steps,
                   fidelity_pairs=fidelity_pairs, swap_per_rule=1)
    w = build(rows, TokenCounter(checkpoint / "tokenizer.json"), plan)
    return {"latency": w.sets[LATENCY_DEV], "rl": w.sets["rl"]["steps"], "fidelity": w.sets["fidelity"],
            "info": {"latency": w.info[LATENCY_DEV], "rl": w.info["rl"], "fidelity": w.info["fidelity"]}}


def _spawn(job: dict, workdir: Path, tag: str) -> dict:
    job_path, result_path, log_path = (workdir / f"{tag}.{x}" for x in ("job.json", "result.json", "log"))
    job_path.write_text(json.dumps(job), encoding="utf-8")
    from rewardrt.bench.runner import worker_env

    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "rewardrt.bench.crosscheck", "--worker", str(job_path),
                               "--result", str(result_path)], stdout=log, stderr=subprocess.STDOUT,
                              env=worker_env())
    if proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise WorkerFailed(f"the {job['engine']} worker failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return json.loads(result_path.read_text(encoding="utf-8"))


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def crosscheck(checkpoint: Path, artifact: Path, pairs_file: str | None, threads: tuple[int, ...], rounds: int,
               rl_steps: int = 2, fidelity_pairs: int | None = None, progress=print) -> dict:
    """Run the side-by-side; returns the summary (also what ``--out`` writes)."""
    from rewardrt.export.config import FidelityBudget
    from rewardrt.runtime.metrics import fidelity

    sets = _sets(checkpoint, pairs_file, rl_steps, fidelity_pairs)
    summary: dict = {"checkpoint": str(checkpoint), "artifact": str(artifact), "rounds": rounds,
                     "workloads": sets.pop("info"), "threads": {}}
    scores: dict[str, list[float]] = {}
    alone_vs_batch = None
    with tempfile.TemporaryDirectory(prefix="rewardrt-crosscheck-") as tmp:
        for n in threads:
            runs: dict[str, list[dict]] = {UPSTREAM: [], REWARDRT: []}
            for r in range(rounds):
                order = (UPSTREAM, REWARDRT) if r % 2 == 0 else (REWARDRT, UPSTREAM)
                for engine in order:
                    first = not scores.get(engine)
                    job = {"engine": engine, "checkpoint": str(checkpoint), "artifact": str(artifact),
                           "threads": n, "latency": sets["latency"], "rl": sets["rl"],
                           "fidelity": sets["fidelity"] if first else None}
                    progress(f"threads {n}, round {r + 1}/{rounds}: {engine}")
                    res = _spawn(job, Path(tmp), f"{engine}-{n}-{r}")
                    runs[engine].append(res)
                    if first:
                        scores[engine] = res["fidelity_scores"]
                        if engine == REWARDRT:
                            alone_vs_batch = res["alone_vs_batch_max_abs"]
            row = {}
            for engine, results in runs.items():
                lat = [t for res in results for t in res["latency_s"]]
                pairs = sum(s["pairs"] for res in results for s in res["rl"])
                secs = sum(s["seconds"] for res in results for s in res["rl"])
                row[engine] = {"batch1_p50_ms": 1e3 * statistics.median(lat), "rl_pairs_per_s": pairs / secs,
                               "load_s_median": statistics.median(res["load_s"] for res in results)}
            row["batch1_speedup"] = _ratio(row[UPSTREAM]["batch1_p50_ms"], row[REWARDRT]["batch1_p50_ms"])
            row["rl_speedup"] = _ratio(row[REWARDRT]["rl_pairs_per_s"], row[UPSTREAM]["rl_pairs_per_s"])
            summary["threads"][str(n)] = row
    fid = fidelity(scores[UPSTREAM], scores[REWARDRT])
    summary["fidelity"] = fid.as_dict()
    summary["fidelity_failures"] = FidelityBudget().failures(fid)
    summary["alone_vs_batch_max_abs"] = alone_vs_batch
    return summary


def report(summary: dict) -> str:
    lines = [f"checkpoint {summary['checkpoint']}", f"artifact   {summary['artifact']}",
             f"rounds {summary['rounds']} (fresh process per engine and round, order alternating)",
             "", "| threads | neural-txt batch-1 p50 | rewardrt batch-1 p50 | batch-1 speed-up (target 4x) "
             "| neural-txt RL pairs/s | rewardrt RL pairs/s | RL speed-up (target 6x) |",
             "|---|---|---|---|---|---|---|"]
    for n, row in summary["threads"].items():
        up, rt = row[UPSTREAM], row[REWARDRT]
        lines.append(f"| {n} | {up['batch1_p50_ms']:.2f} ms | {rt['batch1_p50_ms']:.2f} ms | "
                     f"{row['batch1_speedup']:.2f}x | {up['rl_pairs_per_s']:.1f} | {rt['rl_pairs_per_s']:.1f} | "
                     f"{row['rl_speedup']:.2f}x |")
    f = summary["fidelity"]
    verdict = "inside the budget" if not summary["fidelity_failures"] else \
        "OVER the budget: " + "; ".join(summary["fidelity_failures"])
    lines += ["", f"fidelity on {f['n']} dev pairs: mean |Δ| {f['mean_abs_diff']:.4f}, max |Δ| "
              f"{f['max_abs_diff']:.4f}, Spearman {f['spearman']:.4f}, same side of 0.5 "
              f"{100 * f['agreement_at_half']:.2f}% — {verdict}",
              f"rewardrt score() alone vs in a batch of 64, first {INDEPENDENCE_PAIRS} pairs: max |Δ| "
              f"{summary['alone_vs_batch_max_abs']:.3g}"]
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rewardrt.runtime.clibase import positive, thread_counts

    p = sub.add_parser(
        "crosscheck", help="side by side: upstream neural-txt vs RewardModel on one checkpoint (needs [bench])",
        description="An independent check of the bench's two headline ratios and of the INT8 fidelity "
        "budget: upstream neuraltxt.NeuralTxtReward on CHECKPOINT against RewardModel on ARTIFACT (an "
        f"export of that checkpoint), each in fresh processes, rounds alternating. Needs {NEURALTXT_HINT}.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder in the neuraltxt-reward-tiny layout")
    p.add_argument("--artifact", required=True, help="the .onnx `rewardrt export` wrote from that checkpoint")
    p.add_argument("--threads", type=thread_counts, default=(1, 2),
                   help="comma-separated thread counts (default: 1,2)")
    p.add_argument("--rounds", type=positive, default=3,
                   help="rounds per thread count (default: %(default)s)")
    p.add_argument("--rl-steps", type=positive, default=2,
                   help="RL steps of 64 samples per round (default: %(default)s)")
    p.add_argument("--fidelity-pairs", type=positive, default=None,
                   help="dev pairs for the fidelity check (default: all)")
    p.add_argument("--pairs", dest="pairs_file", default=None, metavar="FILE.jsonl",
                   help="reference/response JSONL whose held-out half is measured (default: the bundled pair set)")
    p.add_argument("--out", default=None, help="also write the summary as JSON here")
    p.set_defaults(func=run)


def check_inputs(checkpoint: Path, artifact: Path) -> None:
    """The artifact must be an export of this very checkpoint: compare the digest it records."""
    from rewardrt import RewardModel
    from rewardrt.export.checkpoint import locate

    if not checkpoint.is_dir():
        raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r} is not a folder")
    if not artifact.is_file():
        raise FileNotFoundError(f"--artifact {str(artifact)!r} is not a file; export one with "
                                "`rewardrt export CHECKPOINT --precision int8`")
    recorded = RewardModel(artifact, threads=1).spec.checkpoint_digest  # checks the file's seal too
    actual = locate(checkpoint).digest()
    if recorded != actual:
        raise ValueError(f"--artifact {str(artifact)!r} was not exported from --checkpoint {str(checkpoint)!r} "
                         f"(it records checkpoint digest {recorded[:16] or 'none'}…, the folder's is {actual[:16]}…)")


def run(args: argparse.Namespace) -> int:
    from rewardrt.export.errors import ExportError
    from rewardrt.runtime.spec import ArtifactError

    checkpoint, artifact = Path(args.checkpoint), Path(args.artifact)
    try:
        if args.out and not Path(args.out).resolve().parent.is_dir():
            raise FileNotFoundError(f"--out {args.out!r}: its folder does not exist")
        check_inputs(checkpoint, artifact)
        pairs_file = args.pairs_file
        if pairs_file is not None and not Path(pairs_file).is_file():
            raise FileNotFoundError(f"--pairs {pairs_file!r} is not a file")
    except (ValueError, FileNotFoundError, ExportError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = crosscheck(checkpoint, artifact, pairs_file, args.threads, args.rounds, args.rl_steps,
                             args.fidelity_pairs, progress=lambda m: print(m, file=sys.stderr, flush=True))
    except WorkerFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = report(summary)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 1 if summary["fidelity_failures"] else 0


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m rewardrt.bench.crosscheck")
    p.add_argument("--worker", required=True)
    p.add_argument("--result", required=True)
    args = p.parse_args(argv)
    job = json.loads(Path(args.worker).read_text(encoding="utf-8"))
    result = run_worker(job)
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
