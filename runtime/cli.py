"""Runtime-side subcommands (torch-free): ``score``, ``rank``, ``info``, ``serve``.

``score`` and ``rank`` take one item on the command line, or stream JSONL (``--input``/``--output``,
``-`` for stdin/stdout) in constant memory: each input line is written back with its extra fields
and a ``score`` (or ``ranked``) added. A malformed line stops the run with its line number, or with
``--on-error skip`` is skipped and reported at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, BinaryIO

from rewardrt.runtime.clibase import CliError, number, port, positive

CHUNK = 512  # pairs scored per model call when streaming
SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score one pair, or a JSONL file of pairs (streaming)")
    _model_args(p)
    p.add_argument("--reference", help="reference answer (with --response)")
    p.add_argument("--response", help="response to score (with --reference)")
    _stream_args(p, '{"reference": str, "response": str, ...}', "score")
    g = p.add_argument_group("on a Ray cluster (needs rewardrt[ray])")
    g.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="score --input (JSONL, or .parquet) with Ray Data: 'auto' (the running cluster, "
                        "e.g. after `ray start --head`), a cluster address, or 'local' (start one here); "
                        "--output may also end in .parquet for Parquet input")
    g.add_argument("--actors", type=positive, default=None,
                   help="scoring actors (default: autoscale up to what the cluster's free CPUs allow)")
    g.add_argument("--cpus-per-actor", type=positive, default=1,
                   help="CPUs reserved per actor, also its threads unless --threads (default: %(default)s)")
    p.set_defaults(func=run_score)

    p = sub.add_parser("rank", help="rank responses against one reference, or a JSONL file of such lists")
    _model_args(p)
    p.add_argument("--reference", help="reference answer (with the responses as arguments)")
    p.add_argument("responses", nargs="*", help="responses to rank")
    _stream_args(p, '{"reference": str, "responses": [str], ...}', "ranked")
    p.set_defaults(func=run_rank)

    p = sub.add_parser("info", help="print what a model artifact says about itself")
    p.add_argument("model", nargs="?", default=None, help="a .onnx artifact (default: the embedded model)")
    p.set_defaults(func=run_info)

    from rewardrt.runtime.serve import DEFAULT_HOST, DEFAULT_PORT, ServeConfig

    d = ServeConfig()
    p = sub.add_parser("serve", help="HTTP scoring server with dynamic batching (needs rewardrt[serve])")
    _model_args(p)
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default: %(default)s, loopback)")
    p.add_argument("--port", type=port, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=positive, default=d.max_batch_tokens,
                   help="estimated tokens per model call across requests (default: %(default)s)")
    p.add_argument("--max-wait-ms", type=number(0), default=d.max_wait_ms,
                   help="how long a request may wait for others to share its batch (default: %(default)s)")
    p.add_argument("--max-queue", type=positive, default=d.max_queue,
                   help="pairs waiting at most; beyond, requests get 503 (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=positive, default=d.max_body_bytes,
                   help="request body size limit (default: %(default)s)")
    p.add_argument("--max-items", type=positive, default=d.max_items,
                   help="texts per list in one request (default: %(default)s)")
    p.add_argument("--max-chars", type=positive, default=d.max_chars,
                   help="characters per text (default: %(default)s)")
    p.add_argument("--graceful-timeout", type=number(1), default=d.graceful_timeout,
                   help="seconds to finish in-flight work on SIGTERM (default: %(default)s)")
    p.add_argument("--body-timeout", type=number(1), default=d.body_timeout,
                   help="seconds a client has to send its whole body; 408 beyond (default: %(default)s)")
    p.add_argument("--max-connections", type=positive, default=d.max_connections,
                   help="open connections at most; 503 beyond (default: %(default)s)")
    p.add_argument("--strip-tokens", type=_strip_tokens, default=d.strip_tokens, metavar="default|none|TOKENS",
                   help="chat-template tokens removed from /get_reward's responses before scoring: "
                        "comma-separated, 'default' standing for the built-in list (ChatML, Llama, "
                        "Mistral, Gemma, Phi, DeepSeek end-of-turn and padding tokens), e.g. "
                        "'default,<|my_eot|>'; 'none' keeps the text as is (default: default)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=run_serve)


def _strip_tokens(text: str) -> tuple[str, ...]:
    from rewardrt.runtime.adapters import parse_strip_tokens

    try:
        return parse_strip_tokens(text, "")  # argparse names the option
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="a .onnx artifact (default: the embedded model)")
    p.add_argument("--threads", type=positive, default=None, help="intra-op threads (default: all cores)")


def _stream_args(p: argparse.ArgumentParser, line: str, added: str) -> None:
    p.add_argument("--input", help=f"JSONL, one {line} per line; - for stdin")
    p.add_argument("--output", default="-",
                   help=f"JSONL out: each input line plus {added!r} (default: - = stdout). For one item given "
                        "on the command line: its JSON line is written there; on stdout the plain text")
    p.add_argument("--on-error", choices=["stop", "skip"], default="stop",
                   help="malformed input line: stop with its line number (default), or skip it and report at the end")


def _cli_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``rewardrt.cli.main`` reports :class:`CliError`; this adds a quiet exit on a closed pipe."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except BrokenPipeError:  # e.g. `rewardrt score --input big.jsonl | head`
            _silence_stdout()
            return 0

    run.__name__ = fn.__name__
    return run


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _load(path: str | None, threads: int | None = None):
    from rewardrt.runtime.api import RewardModel
    from rewardrt.runtime.spec import ArtifactError

    try:
        return RewardModel(path, threads=threads)
    except (FileNotFoundError, ArtifactError) as exc:
        raise CliError(str(exc)) from None


# --- JSONL streaming -----------------------------------------------------------------------------

class _BadLine(Exception):
    def __init__(self, number: int, message: str) -> None:
        super().__init__(message)
        self.number = number
        self.message = message


@contextmanager
def _binary(path: str, mode: str) -> Iterator[BinaryIO]:
    if path == "-":
        std = sys.stdin if mode == "rb" else sys.stdout
        yield getattr(std, "buffer", std)  # a text stream without .buffer (tests) still works
        return
    try:
        handle = open(path, mode)
    except OSError as exc:
        raise CliError(f"cannot open {path!r}: {exc.strerror}") from None
    with handle:
        yield handle


def _rows(src: BinaryIO, check: Callable[[dict], None], on_error: str,
          errors: list[str]) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank input line that passes ``check``."""
    for number, raw in enumerate(src, 1):
        if not raw.strip():
            continue
        try:
            row = parse_line(raw, check)
        except ValueError as exc:
            if on_error == "stop":
                raise _BadLine(number, str(exc)) from None
            errors.append(f"line {number}: {exc}")
        else:
            yield number, row


def parse_line(raw: bytes | str, check: Callable[[dict], None]) -> dict:
    """One JSONL line as an object that passes ``check``; ValueError saying why not otherwise
    (also used by ``rewardrt score --ray``, so both paths refuse the same lines the same way)."""
    try:
        row = json.loads(raw.decode("utf-8-sig") if isinstance(raw, bytes) else raw)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    try:
        check(row)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    return row


def parse_pair(raw: bytes | str) -> dict:
    """A ``rewardrt score`` input line: an object with string ``reference`` and ``response``."""
    return parse_line(raw, _check_pair)


def _need_str(row: dict, key: str) -> None:
    from rewardrt.runtime.api import check_text

    if key not in row:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(row[key], str):
        raise TypeError(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    check_text(f"field {key!r}", row[key])  # a JSON "\\ud800" escape decodes to a lone surrogate


def _check_pair(row: dict) -> None:
    _need_str(row, "reference")
    _need_str(row, "response")


def _check_list(row: dict) -> None:
    _need_str(row, "reference")
    values = row.get("responses")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TypeError("field 'responses' must be a list of strings")
    from rewardrt.runtime.api import check_text

    for i, value in enumerate(values):
        check_text(f"field 'responses'[{i}]", value)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(unit: str) -> Any:
    """A tqdm bar on stderr when stderr is a terminal and tqdm is installed; otherwise nothing."""
    if not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(unit=unit, file=sys.stderr, dynamic_ncols=True)


def _stream(args: argparse.Namespace, check: Callable[[dict], None], size: Callable[[dict], int],
            write: Callable[[Any, list[dict], BinaryIO], None]) -> int:
    model = _load(args.model, args.threads)
    errors: list[str] = []
    written = 0
    name = "stdin" if args.input == "-" else repr(args.input)
    with _binary(args.input, "rb") as src, _binary(args.output, "wb") as dst:
        bar = _progress("line")
        chunk: list[dict] = []
        pairs = 0

        def flush() -> None:
            nonlocal chunk, pairs, written
            if chunk:
                write(model, chunk, dst)
                dst.flush()
                written += len(chunk)
                bar.update(len(chunk))
            chunk, pairs = [], 0

        try:
            for _, row in _rows(src, check, args.on_error, errors):
                chunk.append(row)
                pairs += size(row)
                if pairs >= CHUNK:
                    flush()
            flush()
        except _BadLine as bad:
            flush()  # the valid lines before the bad one are still written
            raise CliError(f"{name} line {bad.number}: {bad.message}; stopped after writing {written} "
                           "lines (--on-error skip skips such lines)", code=1) from None
        finally:
            bar.close()
    if errors:
        shown = errors[:20] + ([f"... and {len(errors) - 20} more"] if len(errors) > 20 else [])
        print(f"skipped {len(errors)} malformed lines:", *shown, sep="\n  ", file=sys.stderr)
    print(f"wrote {written} lines", file=sys.stderr)
    return 0


def _write_scores(model: Any, rows: list[dict], dst: BinaryIO) -> None:
    scores = model.batch_score([r["response"] for r in rows], [r["reference"] for r in rows])
    for row, score in zip(rows, scores):
        dst.write(_jsonl({**row, "score": score}))


def _write_ranked(model: Any, rows: list[dict], dst: BinaryIO) -> None:
    responses = [resp for r in rows for resp in r["responses"]]
    references = [r["reference"] for r in rows for _ in r["responses"]]
    scores = model.batch_score(responses, references)
    start = 0
    for row in rows:
        own = scores[start:start + len(row["responses"])]
        start += len(own)
        order = sorted(range(len(own)), key=lambda i: own[i], reverse=True)
        ranked = [{"index": i, "response": row["responses"][i], "score": own[i]} for i in order]
        dst.write(_jsonl({**row, "ranked": ranked}))


def _jsonl(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")


def _write_one(path: str, obj: dict) -> None:
    """One JSON line into ``path``, written whole or not at all (a temporary file renamed over it)."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise CliError(f"--output {path!r}: folder {folder!r} does not exist")
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(_jsonl(obj))
        os.replace(tmp, target)
    except OSError as exc:
        raise CliError(f"cannot write --output {path!r}: {exc.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- subcommands ---------------------------------------------------------------------------------

@_cli_errors
def run_score(args: argparse.Namespace) -> int:
    single = args.reference is not None or args.response is not None
    if single == (args.input is not None):
        raise CliError("give either --reference and --response, or --input FILE")
    if single:
        if args.reference is None or args.response is None:
            raise CliError("--reference and --response go together")
        model = _load(args.model, args.threads)
        score = model.score(args.response, args.reference)
        if args.output == "-":
            print(f"{score:.6f}")
        else:
            _write_one(args.output, {"reference": args.reference, "response": args.response, "score": score})
        return 0
    if args.ray is not None:
        return _score_on_ray(args)
    if args.actors is not None or args.cpus_per_actor != 1:
        raise CliError("--actors and --cpus-per-actor go with --ray")
    return _stream(args, _check_pair, lambda row: 1, _write_scores)


def _score_on_ray(args: argparse.Namespace) -> int:
    from rewardrt.ray import BadLineError, RayScoringError, connect, score_file

    if args.input == "-":
        raise CliError("--ray reads files: give --input PATH (JSONL or .parquet), not stdin")
    name = repr(args.input)
    try:
        with connect(args.ray, log_to_driver=args.output != "-"):
            done = score_file(args.input, args.output, args.model, actors=args.actors,
                              cpus_per_actor=args.cpus_per_actor, threads=args.threads,
                              on_error=args.on_error)
    except BadLineError as bad:
        raise CliError(f"{name} line {bad.number}: {bad.message}; stopped after writing {bad.written} "
                       "lines (--on-error skip skips such lines)", code=1) from None
    except (RayScoringError, FileNotFoundError, ValueError, ConnectionError) as exc:
        raise CliError(str(exc)) from None
    if done.errors:
        shown = done.errors[:20] + ([f"... and {len(done.errors) - 20} more"] if len(done.errors) > 20 else [])
        print(f"skipped {len(done.errors)} malformed lines:", *shown, sep="\n  ", file=sys.stderr)
    print(f"wrote {done.rows} lines in {done.seconds:.1f} s ({done.rows / max(done.seconds, 1e-9):.0f} pairs/s "
          f"on Ray, {done.cluster_cpus:g} CPUs)", file=sys.stderr)
    return 0


@_cli_errors
def run_rank(args: argparse.Namespace) -> int:
    single = args.reference is not None or bool(args.responses)
    if single == (args.input is not None):
        raise CliError("give either --reference and responses to rank, or --input FILE")
    if single:
        if args.reference is None or not args.responses:
            raise CliError("--reference and the responses to rank go together")
        model = _load(args.model, args.threads)
        ranked = model.rank(args.responses, args.reference)
        if args.output == "-":
            for item in ranked:
                print(f"{item.score:.6f}\t{item.index}\t{item.response}")
        else:
            _write_one(args.output, {"reference": args.reference, "responses": args.responses,
                                     "ranked": [asdict(item) for item in ranked]})
        return 0
    return _stream(args, _check_list, lambda row: max(1, len(row["responses"])), _write_ranked)


@_cli_errors
def run_info(args: argparse.Namespace) -> int:
    from rewardrt.runtime.cpu import cpu_features

    model = _load(args.model)
    print(json.dumps({"path": str(model.path), **asdict(model.spec), "cpu": cpu_features()}, indent=2))
    return 0


@_cli_errors
def run_serve(args: argparse.Namespace) -> int:
    from rewardrt.runtime.serve import ServeConfig, serve

    try:
        config = ServeConfig(max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                             max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
                             max_items=args.max_items, max_chars=args.max_chars,
                             graceful_timeout=args.graceful_timeout, body_timeout=args.body_timeout,
                             max_connections=args.max_connections, strip_tokens=args.strip_tokens)
    except (TypeError, ValueError) as exc:
        raise CliError(str(exc)) from None
    for name in SERVE_MODULES:
        try:
            __import__(name)
        except ModuleNotFoundError:
            raise CliError(f"`rewardrt serve` needs {name!r}; pip install 'rewardrt[serve]'") from None
    logger = logging.getLogger("rewardrt")  # the command owns its process: show the server's own logs
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(args.log_level.upper())
    model = _load(args.model, args.threads)
    try:
        return serve(model, host=args.host, port=args.port, config=config, log_level=args.log_level,
                     access_log=args.access_log)
    except ValueError as exc:
        raise CliError(str(exc)) from None
