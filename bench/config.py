"""What a bench run measures: the quick and full plans, and the checks on command-line values.

Stdlib only, so ``rewardrt --help`` stays fast: the CLI uses the parsers here as argparse types.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from rewardrt.runtime.clibase import positive, thread_counts


@dataclass(frozen=True)
class BenchPlan:
    """How much of each workload one run measures. Sizes are per engine, per round, per thread count."""

    mode: str
    rounds: int                      # alternating rounds over all engines
    lengths: tuple[int, ...]         # batch-1 latency: total tokens of "reference [SEP] response"
    latency_calls: int               # distinct texts per length, each scored once per round
    latency_dev_calls: int           # batch-1 calls on ordinary dev pairs (20-80 tokens) per round
    batches: tuple[int, ...]         # throughput: the caller's batch size
    throughput_pairs: int            # dev pairs per batch size per round (at least one call of each size)
    rl_steps: int                    # RL steps per round, one batch_score call each
    rl_groups: int                   # GRPO groups (of 8 samples sharing a reference) per step (8: a batch of 64)
    cold_repeats: int                # fresh processes per engine
    fidelity_pairs: int | None       # dev pairs scored by every engine (None: all of them)
    swap_per_rule: int               # one-word-swap probes per edit rule
    warmup_pairs: int                # one untimed batch of this many pairs per engine and thread count
    export_validation: int | None    # ExportConfig.validation_size for the artifacts we export
    export_calibration: int          # ExportConfig.calibration_size
    profile_calls: int = 16          # profiled batch-1 calls (ordinary pairs, 20-80 tokens)
    profile_batch_calls: int = 4     # profiled calls of 32 pairs
    peak_calls: int = 8              # timed calls of the INT8 peak GEMM per op and thread count

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {self.rounds}")
        if not self.lengths or min(self.lengths) < 16 or max(self.lengths) > 512:
            raise ValueError(f"latency lengths must lie in [16, 512] tokens, got {self.lengths}")


QUICK = BenchPlan(
    mode="quick", rounds=1, lengths=(32, 128, 512), latency_calls=3, latency_dev_calls=8, batches=(8, 32, 64),
    throughput_pairs=16, rl_steps=1, rl_groups=1, cold_repeats=1, fidelity_pairs=250,
    swap_per_rule=15, warmup_pairs=8, export_validation=64, export_calibration=32,
    profile_calls=8, profile_batch_calls=1, peak_calls=3,
)
FULL = BenchPlan(
    mode="full", rounds=4, lengths=(32, 64, 128, 256, 512), latency_calls=8, latency_dev_calls=48,
    batches=(8, 32, 64),
    throughput_pairs=128, rl_steps=1, rl_groups=8, cold_repeats=3, fidelity_pairs=None,
    # the CLI's default calibration size (ExportConfig.calibration_size), so "exported here" is the
    # plan `rewardrt export --precision int8` gives: with 256 pairs the search can land elsewhere
    swap_per_rule=300, warmup_pairs=64, export_validation=None, export_calibration=512,
)
GROUP_SIZE = 8  # GRPO samples per prompt, all scored against the same reference


def throughput_pairs(plan: BenchPlan, batch: int) -> int:
    """Pairs scored at one batch size per round: whole calls only, at least one."""
    return max(batch, plan.throughput_pairs // batch * batch)


def checked(option: str, convert, value):
    """``convert`` (a typed option value of rewardrt.runtime.clibase) applied to ``value`` from code
    rather than the command line; its complaint as a ValueError naming ``option``."""
    try:
        return convert(str(value))
    except argparse.ArgumentTypeError as exc:
        raise ValueError(f"{option} {exc}") from None


@dataclass(frozen=True)
class BenchConfig:
    plan: BenchPlan
    threads: tuple[int, ...]
    out: Path
    checkpoint: Path | None
    pairs: str | None
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BenchConfig":
        """Check every value a caller (the CLI or a test) put in ``args``; errors name the option."""
        plan = QUICK if getattr(args, "quick", False) else FULL
        rounds = getattr(args, "rounds", None)
        if rounds is not None:
            plan = replace(plan, rounds=checked("--rounds", positive, rounds))
        threads = getattr(args, "threads", None)
        threads = checked("--threads", thread_counts, ",".join(map(str, threads)) if isinstance(threads, (tuple, list))
                          else threads if threads is not None else "1,2")
        out = Path(getattr(args, "out", None) or "bench-results")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; give a folder for the results")
        checkpoint = getattr(args, "checkpoint", None)
        if checkpoint is not None:
            checkpoint = Path(checkpoint)
            if not checkpoint.is_dir():
                raise FileNotFoundError(f"--checkpoint {str(checkpoint)!r} is not a folder; give a "
                                        "checkpoint in the neuraltxt-reward-tiny layout")
        pairs = getattr(args, "pairs", None)
        if pairs is not None and not Path(pairs).is_file():
            raise FileNotFoundError(f"--pairs {pairs!r} is not a file; give a JSONL file of "
                                    "'reference'/'response' rows")
        return cls(plan=plan, threads=threads, out=out, checkpoint=checkpoint, pairs=pairs,
                   progress=not getattr(args, "no_progress", False))
