"""The ``rewardrt`` command: where the rooms' verbs are put together. Each room registers its own
(score/rank/info from runtime/cli, serve from runtime/serve, ``score --ray`` from the Ray room,
export, train/eval/pack/materialize from models, bench); heavy imports (torch, Ray, Starlette) happen
only when a verb that needs them runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXTRA_FOR = {"torch": "export", "transformers": "export", "onnx": "export", "safetensors": "export",
             "scipy": "eval", "matplotlib": "bench", "tqdm": "bench", "psutil": "bench",
             "ray": "ray", "pyarrow": "ray"}


def build_parser() -> argparse.ArgumentParser:
    from rewardrt import __version__
    from rewardrt.export import cli as export_cli
    from rewardrt.models import cli as models_cli
    from rewardrt.runtime import cli as runtime_cli
    from rewardrt.runtime.clibase import Parser
    from rewardrt.runtime.integrations import raycli as ray_cli
    from rewardrt.runtime.serve import cli as serve_cli

    parser = Parser(prog="rewardrt", description="Fast torch-free CPU reward scoring.")
    parser.add_argument("--version", action="version", version=f"rewardrt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    verbs = runtime_cli.add_parsers(sub)
    ray_cli.add_options(verbs["score"])
    serve_cli.add_parser(sub)
    export_cli.add_parser(sub)
    models_cli.add_parsers(sub)
    try:
        from rewardrt.bench import cli as bench_cli
    except ImportError:  # pragma: no cover - bench is part of every install, its deps are not
        bench_cli = None
    if bench_cli is not None:
        bench_cli.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rewardrt.runtime.clibase import CliError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except ModuleNotFoundError as exc:
        extra = EXTRA_FOR.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"error: `rewardrt {args.command}` needs {exc.name!r}; pip install 'rewardrt[{extra}]'",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
