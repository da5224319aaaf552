"""``rewardrt export CHECKPOINT_DIR -o OUT.onnx --precision {fp32,int8} --target {avx512-vnni,avx2,auto}``"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rewardrt.export.errors import ExportError, FidelityError
from rewardrt.runtime.clibase import integer, number, positive
from rewardrt.runtime.spec import TARGET_BITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to one verified ONNX graph",
        description="Fold encoder + mean/max pooling + head into one ONNX graph (fp32, or INT8 "
        "with a fidelity gate), embed tokenizer and spec, verify against the torch reference.",
    )
    p.add_argument("checkpoint_dir", help="folder in the neuraltxt-reward-tiny layout")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="int8")
    p.add_argument("--max-length", type=integer(3, 8192), default=512, help="truncation length in tokens (default 512)")
    p.add_argument("--calibration", metavar="FILE.jsonl", default=None,
                   help="pairs to calibrate and verify on: JSONL rows with string fields 'reference' and "
                        "'response' (your own traffic), split by a seeded shuffle into a calibration half "
                        "and a held-out half for the gate (default: the bundled pair set)")
    p.add_argument("--validation-size", type=integer(8), default=None,
                   help="held-out pairs for the gate (default: all of them)")
    p.add_argument("--calibration-size", type=integer(8), default=512,
                   help="calibration pairs for the INT8 plan search (default 512, plus 1/16 as many long pairs)")
    p.add_argument("--agreement-margin", type=number(highest=1, above=0), default=None,
                   help="fraction of the agreement@0.5 slack the plan search may use (default: the "
                        "search margin, 0.5); a larger calibration set allows a larger fraction")
    p.add_argument("--target", choices=[*TARGET_BITS, "auto"], default="auto",
                   help="INT8: the CPUs the artifact is verified for. avx512-vnni (AVX512_VNNI or AVX_VNNI "
                        "sums uint8 x int8 products in int32): 8-bit activation codes, twice as fine as 7 "
                        "(more MatMuls fit the budget, so faster), and MatMulNBits weights where they fit; "
                        "the artifact warns when it loads on a CPU without VNNI. avx2 (VPMADDUBSW adds "
                        "pairs of products in saturating int16): 7-bit codes and dequant weights, exact "
                        "and fast on every x86 CPU; use it for an artifact that travels to unknown CPUs. "
                        "auto (default): this CPU's")
    p.add_argument("--activation-bits", choices=["auto", "7", "8"], default="auto",
                   help="integer-GEMM activation-code width, when it must differ from the target's "
                        "(avx512-vnni: 8, also allows 7; avx2: 7 only); with --target auto, 7 implies "
                        "avx2 and 8 avx512-vnni. auto (default): the target's")
    p.add_argument("--integer-schemes", default="token",
                   help="comma-separated integer-GEMM schemes the plan search tries, in order: token, "
                        "token2 (default: token; 'none' for none)")
    p.add_argument("--weight-only", choices=["auto", "dequant", "block"], default="auto",
                   help="int8-weight scheme of the other MatMuls: dequant (fp32 compute on weights "
                        "expanded at load: fp32 speed on every CPU) or block (MatMulNBits: less memory, "
                        "faster than fp32 on VNNI CPUs, ~2.5x slower on AVX2-only ones); auto (default): "
                        "search from dequant, then, for the avx512-vnni target, "
                        "move as many of those MatMuls to block as keep the plan inside the search target")
    p.add_argument("--embedding-table", choices=["float16", "int8"], default="float16",
                   help="INT8: how the word-embedding table is stored: float16 (default; scores within "
                        "1e-3 of fp32 from it) or int8 rows (11.7 MB smaller for MiniLM, but its rounding "
                        "alone can move a near-miss short answer by 0.04)")
    p.add_argument("--weights-file", action="store_true",
                   help="keep the large tensors in one file beside the .onnx (OUT.onnx.<digest>.data, "
                        "ONNX external data): onnxruntime maps it instead of copying it out of the graph, "
                        "so a scoring process of the default-size model peaks 30-40 MB lower and processes on one host share it; "
                        "copy both files together (default: one self-contained .onnx)")
    p.add_argument("--one-sided-gelu", action=argparse.BooleanOptionalAction, default=True,
                   help="token-scheme MatMuls reading a GELU output quantize it one-sided (codes 0..255 "
                        "of x + 0.1701, twice as fine as ±127; default on)")
    p.add_argument("--gate-retries", type=integer(0, 8), default=4,
                   help="INT8: when the held-out gate rejects the searched plan, verify up to this many "
                        "more with its integer-GEMM MatMuls cut in even steps to none (default 4: 3/4, "
                        "1/2, 1/4, none; 0: fail at once)")
    p.add_argument("--start-plan", default="default", metavar="default|none|ARTIFACT.onnx",
                   help="INT8: first try the plan this artifact records and keep it if it fits the search "
                        "target and the gate, searching only otherwise; default: the embedded default "
                        "model's plan (it fits checkpoints of its architecture close to it, which makes "
                        "their export minutes faster); none: always search")
    p.add_argument("--threads", type=positive, default=None, help="intra-op threads (default: all cores)")
    p.set_defaults(func=run)


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) so the export's working folder is removed on the way out
    (the output file is only ever replaced atomically, see export/workdir.py)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _schemes(text: str) -> tuple[str, ...]:
    """``--integer-schemes``: 'token,token2' -> ('token', 'token2'); 'none' -> ()."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    return () if names == ("none",) else names


def run(args: argparse.Namespace) -> int:
    from rewardrt.export.config import ExportConfig, check_target_bits
    from rewardrt.export.exporter import export

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rewardrt").setLevel(logging.INFO)
    bits = None if args.activation_bits == "auto" else int(args.activation_bits)
    try:
        check_target_bits(args.target, bits, names=("--target", "--activation-bits"))
        cfg = ExportConfig(precision=args.precision, max_length=args.max_length, calibration=args.calibration,
                           validation_size=args.validation_size, calibration_size=args.calibration_size,
                           agreement_margin=args.agreement_margin, threads=args.threads,
                           target=args.target, activation_bits=bits, weight_only=args.weight_only,
                           integer_schemes=_schemes(args.integer_schemes), gate_retries=args.gate_retries,
                           one_sided_gelu=args.one_sided_gelu, embedding_table=args.embedding_table,
                           weights_file=args.weights_file,
                           start_from=None if args.start_plan == "none" else args.start_plan)
        with _sigterm_unwinds():
            report = export(args.checkpoint_dir, args.output, cfg)
    except FidelityError as exc:
        if exc.report is not None:
            print(exc.report.describe(), file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ExportError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.describe())
    return 0
