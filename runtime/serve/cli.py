"""``rewardrt serve``: its flags (one per :class:`~rewardrt.runtime.serve.ServeConfig` field) and its run."""

from __future__ import annotations

import argparse
import logging

from rewardrt.runtime import clibase
from rewardrt.runtime.clibase import CliError, model_args, number, port, positive

SERVE_MODULES = ("starlette", "uvicorn", "prometheus_client")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from rewardrt.runtime.serve import DEFAULT_HOST, DEFAULT_PORT, ServeConfig

    d = ServeConfig()
    p = sub.add_parser("serve", help="HTTP scoring server with dynamic batching (needs rewardrt[serve])")
    model_args(p)
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
    from rewardrt.runtime.chat import parse_strip_tokens

    try:
        return parse_strip_tokens(text, "")  # argparse names the option
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    model = clibase.load_model(args.model, args.threads)
    try:
        return serve(model, host=args.host, port=args.port, config=config, log_level=args.log_level,
                     access_log=args.access_log)
    except ValueError as exc:
        raise CliError(str(exc)) from None
