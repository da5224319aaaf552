"""What every ``rewardrt`` subcommand shares: typed option values (each refuses a bad value with one
sentence that argparse reports under the option's name), the parser with the one error style
(``error: ...`` on one line, exit 2) and :class:`CliError`, which ``rewardrt.cli.main`` reports the
same way."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def integer(lowest: int | None = None, highest: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an int in [lowest, highest] (either bound may be None)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an integer{_bounds(lowest, highest)}, got {text!r}") from None
        if (lowest is not None and value < lowest) or (highest is not None and value > highest):
            raise argparse.ArgumentTypeError(f"must be an integer{_bounds(lowest, highest)}, got {text!r}")
        return value

    convert.__name__ = "integer"
    return convert


def number(lowest: float | None = None, highest: float | None = None, *,
           above: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in [lowest, highest], or > ``above``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            value = float("nan")
        ok = value == value and abs(value) != float("inf")
        ok = ok and (lowest is None or value >= lowest) and (highest is None or value <= highest)
        ok = ok and (above is None or value > above)
        if not ok:
            bound = f" > {above:g}" if above is not None else _bounds(lowest, highest)
            raise argparse.ArgumentTypeError(f"must be a number{bound}, got {text!r}")
        return value

    convert.__name__ = "number"
    return convert


def _bounds(lowest: float | None, highest: float | None) -> str:
    if lowest is not None and highest is not None:
        return f" in [{lowest:g}, {highest:g}]"
    if lowest is not None:
        return f" >= {lowest:g}"
    if highest is not None:
        return f" <= {highest:g}"
    return ""


positive = integer(1)
non_negative = integer(0)
port = integer(0, 65535)


def thread_counts(text: str) -> tuple[int, ...]:
    """An argparse ``type``: ``"1,2"`` -> (1, 2), distinct positive thread counts, ascending."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated positive integers such as 1,2, got {text!r}")
    return tuple(sorted(set(values)))


class Parser(argparse.ArgumentParser):
    """argparse with the project's one error style: a single ``error: ...`` line and exit code 2
    (argparse's own prints the usage first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


class CliError(Exception):
    """A failure reported as one ``error:`` line on stderr and an exit code, without a traceback."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def load_model(path: str | None, threads: int | None = None):
    """The RewardModel at ``path`` (None: the embedded default), a missing or bad artifact as CliError."""
    from rewardrt.runtime.api import RewardModel
    from rewardrt.runtime.spec import ArtifactError

    try:
        return RewardModel(path, threads=threads)
    except (FileNotFoundError, ArtifactError) as exc:
        raise CliError(str(exc)) from None


def model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and ``--threads``, as every scoring verb takes them."""
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--threads", type=positive, default=None, help="intra-op threads (default: all cores)")


def report_skipped(errors: list[str], shown: int = 20) -> None:
    """The malformed input lines an ``--on-error skip`` run left out, on stderr (the first ``shown``)."""
    if errors:
        more = [f"... and {len(errors) - shown} more"] if len(errors) > shown else []
        print(f"skipped {len(errors)} malformed lines:", *errors[:shown], *more, sep="\n  ", file=sys.stderr)
