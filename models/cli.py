"""Model-side subcommands: ``train``, ``pack``, ``materialize``, ``eval``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rewardrt.models import DEFAULT_MODEL_NAME, model_dir


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the default reward model from its recipe (needs [export])")
    p.add_argument("--recipe", default=str(model_dir() / "recipe.json"))
    p.add_argument("--out", default=f".artifacts/{DEFAULT_MODEL_NAME}",
                   help="run folder: checkpoint/ and train_log.json are written here")
    p.add_argument("--cpus", type=int, default=None,
                   help="a soup recipe trains its runs side by side while their threads fit in this many "
                        "CPUs (default: all); no effect on the weights")
    p.set_defaults(func=run_train)

    p = sub.add_parser("pack", help="store a trained checkpoint as a delta over the packaged base")
    p.add_argument("checkpoint_dir")
    p.add_argument("--out", default=str(model_dir() / "delta.safetensors"))
    p.set_defaults(func=run_pack)

    p = sub.add_parser("materialize", help="rebuild the default model's full fp32 checkpoint folder "
                       "(neuraltxt-reward-tiny layout) from the packaged base + the shipped delta")
    p.add_argument("--out", default=f".artifacts/{DEFAULT_MODEL_NAME}/materialized",
                   help="folder to write (default: %(default)s)")
    p.set_defaults(func=run_materialize)

    p = sub.add_parser("eval", help="evaluation table of a model on labelled pairs")
    p.add_argument("model", help="a .onnx artifact")
    p.add_argument("data", help="labelled pairs JSONL (fields a, b, source, similarity, ...)")
    p.add_argument("--torch-checkpoint", help="also score with the torch reference of this checkpoint "
                   "(the fp32 column; needs [export])")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the Word F1 and base-embedding cosine columns")
    p.add_argument("--json", help="also write the table as JSON here")
    p.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from rewardrt.models.soup import is_soup, train_soup
    from rewardrt.models.train import train

    if args.cpus is not None and args.cpus < 1:
        raise SystemExit(f"rewardrt train: --cpus must be >= 1, got {args.cpus}")
    if not Path(args.recipe).is_file():
        raise SystemExit(f"rewardrt train: --recipe {args.recipe!r} is not a file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if is_soup(args.recipe):
        summary = train_soup(args.recipe, args.out, args.cpus)
        runs = ", ".join(f"{n} step {s['selected_step']}" for n, s in summary["runs"].items())
        print(f"averaged {runs}; wall time {summary['wall_time_s']:.0f} s; "
              f"checkpoint in {Path(args.out) / 'checkpoint'}")
        return 0
    summary = train(args.recipe, args.out)
    print(f"selected epoch {summary['selected_epoch']}, wall time {summary['wall_time_s']:.0f} s; "
          f"checkpoint in {Path(args.out) / 'checkpoint'}")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from rewardrt.models.delta import pack

    info = pack(args.checkpoint_dir, args.out)
    print(f"wrote {args.out}: {info['tensors']} tensors, {info['bytes'] / 1e6:.1f} MB")
    return 0


def run_materialize(args: argparse.Namespace) -> int:
    from rewardrt.models.delta import materialize

    out = materialize(model_dir() / "delta.safetensors", args.out)
    print(out)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import json

    from rewardrt.runtime.api import RewardModel
    from rewardrt.runtime.evaluate import (
        evaluate, format_table, read_labelled, spread_table, swap_probes, word_f1_scorer,
    )

    rows = read_labelled(args.data)
    probes = swap_probes(rows)
    columns: dict[str, dict[str, float]] = {}
    if not args.no_baselines:
        columns["Word F1"] = evaluate(rows, word_f1_scorer, probes)
        try:
            from rewardrt.export.baselines import base_cosine_scorer
            columns["MiniLM cosine"] = evaluate(rows, base_cosine_scorer(), probes)
        except ImportError as exc:
            print(f"note: skipping the base-embedding cosine column ({exc.name} is not installed)",
                  file=sys.stderr)
    if args.torch_checkpoint:
        from rewardrt.export.reference import TorchReward

        ref = TorchReward(args.torch_checkpoint)
        columns["fp32 (torch)"] = evaluate(rows, lambda a, b: ref.batch_score(list(b), list(a)), probes)
    model = RewardModel(args.model)
    columns[f"{model.spec.precision} (rewardrt)"] = evaluate(
        rows, lambda a, b: model.batch_score(list(b), list(a)), probes)
    counts = {f"swap {k} {m}": len(v) for k, v in probes.items() for m in ("drop", "noticed")}
    print(format_table(columns, counts))
    print(f"\nScore spread of {model.path.name} on the {len(rows)} pairs:\n")
    print(spread_table(model.batch_score([r["b"] for r in rows], [r["a"] for r in rows])))
    if args.json:
        Path(args.json).write_text(json.dumps(columns, indent=2))
    return 0
