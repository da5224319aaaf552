"""Model-side subcommands: ``train``, ``pack``, ``materialize``, ``eval``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rewardrt.models import DEFAULT_MODEL_NAME, model_dir
from rewardrt.runtime.clibase import CliError, integer, positive

# the short-answer probes of `rewardrt eval`: the PROBE template set (disjoint from training's)
PROBE_GROUPS = 60
PROBE_SEED = 20261204


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the default reward model from its recipe (needs [export])")
    p.add_argument("--recipe", default=str(model_dir() / "recipe.json"))
    p.add_argument("--out", default=f".artifacts/{DEFAULT_MODEL_NAME}",
                   help="run folder: checkpoint/ and train_log.json are written here")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder with the recipe's labelled sentence pairs (pairs-train.jsonl, pairs-dev.jsonl: "
                        "JSONL rows with a, b, source, similarity); default: $REWARDRT_DATA. The model "
                        "card names the public datasets and where to obtain them")
    p.add_argument("--cpus", type=positive, default=None,
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

    p = sub.add_parser("eval", help="evaluation tables of a model: generated short answers, and labelled "
                       "sentence pairs when given (torch-free)")
    p.add_argument("model", nargs="?", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("data", nargs="?", default=None,
                   help="labelled pairs JSONL (fields a, b, source, similarity, ...) for the sentence-pair "
                        "table; without it only the short-answer table is printed")
    p.add_argument("--torch-checkpoint", help="also score with the torch reference of this checkpoint "
                   "(the fp32 column; needs [export])")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the Word F1 and base-embedding cosine columns")
    p.add_argument("--no-short-answers", action="store_true", help="skip the short-answer table")
    p.add_argument("--probe-groups", type=positive, default=PROBE_GROUPS, metavar="N",
                   help="short-answer probe groups per kind (default: %(default)s)")
    p.add_argument("--probe-seed", type=integer(), default=PROBE_SEED,
                   help="seed of the short-answer probes (default: %(default)s)")
    p.add_argument("--json", help="also write the tables as JSON here")
    p.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from rewardrt.models.soup import is_soup, train_soup
    from rewardrt.models.train import train

    if not Path(args.recipe).is_file():
        raise CliError(f"--recipe {args.recipe!r} is not a file")
    from rewardrt.models.train import DataError, data_dir

    folder = data_dir(args.data)
    if args.data is not None and not folder.is_dir():
        raise CliError(f"--data {args.data!r} is not a folder")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if is_soup(args.recipe):
        try:
            summary = train_soup(args.recipe, args.out, args.cpus, folder)
        except DataError as exc:
            raise CliError(str(exc)) from None
        runs = ", ".join(f"{n} step {s['selected_step']}" for n, s in summary["runs"].items())
        print(f"averaged {runs}; wall time {summary['wall_time_s']:.0f} s; "
              f"checkpoint in {Path(args.out) / 'checkpoint'}")
        return 0
    try:
        summary = train(args.recipe, args.out, data=folder)
    except DataError as exc:
        raise CliError(str(exc)) from None
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


def _remembered(fn):
    """``fn`` that scores the same (references, responses) call only once: the tables and the
    fidelity figures ask each column for the same pairs."""
    seen: dict = {}

    def score(references, responses):
        key = (tuple(references), tuple(responses))
        if key not in seen:
            seen[key] = list(fn(references, responses))
        return seen[key]
    return score


def _scorers(args: argparse.Namespace, model) -> dict:
    """The columns: (references, responses) -> scores, each call scored once."""
    from rewardrt.models.evaluate import word_f1_scorer

    columns: dict = {}
    if not args.no_baselines:
        columns["Word F1"] = word_f1_scorer
        try:
            from rewardrt.export.baselines import base_cosine_scorer
            columns["MiniLM cosine"] = base_cosine_scorer()
        except ImportError as exc:
            print(f"note: skipping the base-embedding cosine column ({exc.name} is not installed)",
                  file=sys.stderr)
    if args.torch_checkpoint:
        from rewardrt.export.reference import TorchReward

        ref = TorchReward(args.torch_checkpoint)
        columns["fp32 (torch)"] = lambda a, b: ref.batch_score(list(b), list(a))
    columns[f"{model.spec.precision} (rewardrt)"] = lambda a, b: model.batch_score(list(b), list(a))
    return {name: _remembered(fn) for name, fn in columns.items()}


def run_eval(args: argparse.Namespace) -> int:
    import json

    from rewardrt.models import shortanswers
    from rewardrt.runtime.api import RewardModel
    from rewardrt.models.evaluate import evaluate, format_table, read_labelled, spread_table, swap_probes

    if args.data is not None and not Path(args.data).is_file():
        raise CliError(f"data {args.data!r} is not a file")
    try:
        rows = read_labelled(args.data) if args.data is not None else None
    except ValueError as exc:
        raise CliError(str(exc)) from None
    try:
        model = RewardModel(args.model)
    except (FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    scorers = _scorers(args, model)
    report: dict = {}
    if not args.no_short_answers:
        probes = shortanswers.groups(shortanswers.PROBE, args.probe_groups, args.probe_seed, hedge_share=1.0,
                                     decoy_share=1.0)
        short = {name: shortanswers.evaluate_groups(probes, fn) for name, fn in scorers.items()}
        report["short_answers"] = short
        print(f"Short answers: {len(probes)} generated probe groups ({args.probe_groups} per kind, "
              f"seed {args.probe_seed}, templates disjoint from training's)\n")
        print(shortanswers.format_table(short))
    if rows is not None:
        probes_by_rule = swap_probes(rows)
        columns = {name: evaluate(rows, fn, probes_by_rule) for name, fn in scorers.items()}
        report["pairs"] = columns
        counts = {f"swap {k} {m}": len(v) for k, v in probes_by_rule.items() for m in ("drop", "noticed")}
        print(f"\nLabelled pairs: {len(rows)} from {args.data}\n")
        print(format_table(columns, counts))
        print(f"\nScore spread of {model.path.name} on the {len(rows)} pairs:\n")
        print(spread_table(model.batch_score([r["b"] for r in rows], [r["a"] for r in rows])))
    if args.torch_checkpoint:
        report["fidelity"] = _fidelity_vs_fp32(scorers, rows, probes if not args.no_short_answers else None)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _fidelity_vs_fp32(scorers: dict, rows: list[dict] | None, probes) -> dict:
    """The artifact against its fp32 torch model (clamped scores) on the labelled pairs and on the
    short-answer probes: the INT8 budget's four figures, printed and returned."""
    from rewardrt.runtime.metrics import fidelity

    ours = next(name for name in scorers if name.endswith("(rewardrt)"))
    sets = {}
    if rows is not None:
        sets["labelled pairs"] = ([r["a"] for r in rows], [r["b"] for r in rows])
    if probes is not None:
        pairs = [(g.reference, x) for g in probes for x in (*g.positives, *g.negatives, g.reference)]
        sets["short-answer probes"] = ([a for a, _ in pairs], [b for _, b in pairs])
    out = {}
    print(f"\nFidelity of {ours} against fp32 (torch), clamped scores:\n")
    for name, (refs, resps) in sets.items():
        f = fidelity(scorers["fp32 (torch)"](refs, resps), scorers[ours](refs, resps))
        out[name] = f.as_dict()
        print(f"  {name}: {f.describe()}")
    return out
