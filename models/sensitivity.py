"""Where a checkpoint's INT8 error comes from, measured in torch on the export's held-out pairs: the
clamped score's change when one part of the model is rounded as an INT8 artifact rounds it, each
part alone, and the pairs it moves most.

Parts: the word-embedding table as int8 rows (one scale per row) or as float16 (the export's two
``--embedding-table`` forms); every encoder Linear's weights as int8 in blocks of 32 along K with
fp32 activations (the ``dequant`` scheme); and every encoder Linear on simulated per-token
activation codes with per-channel int8 weights (the all-``token`` plan, :mod:`.quantsim`). The
export's own plan search measures the same thing MatMul by MatMul on ONNX graphs; this is the
quick torch view for model work (which pairs are steep, and what sets the floor).

With ``--by-layer``, the all-token plan is also applied to one layer at a time and to one Linear role
at a time (Q/K/V, attention output, FFN in, FFN out, across layers): where the steep pairs turn.

``python -m rewardrt.models.sensitivity CHECKPOINT [--top 5] [--pairs FILE.jsonl] [--by-layer]`` (needs torch)
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from rewardrt.models.quantsim import encoder_linears, fake_quant_weight, reads_gelu, simulated_int8


def int8_blocks(w: torch.Tensor, block: int = 32) -> torch.Tensor:
    """A Linear's weight [out, in] as int8 codes in blocks of ``block`` inputs per output (``dequant``;
    one block per output when ``block`` does not divide the inputs, as the export does)."""
    out, k = w.shape
    if k % block:
        return fake_quant_weight(w)
    return fake_quant_weight(w.reshape(out * k // block, block)).reshape(out, k)


@contextlib.contextmanager
def replaced(tensors: list[torch.Tensor], fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """``tensors`` (parameters) set to ``fn`` of themselves inside the block, restored after."""
    saved = [t.detach().clone() for t in tensors]
    try:
        with torch.no_grad():
            for t in tensors:
                t.copy_(fn(t))
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(tensors, saved):
                t.copy_(s)


# A BERT layer's Linears by role (module-name suffix): what --by-layer quantizes one role at a time.
# "FFN out" (.output.dense) also ends the attention output's name: it is the Linear that reads the
# GELU (quantsim.reads_gelu).
ROLES = {"Q/K/V": (".attention.self.query", ".attention.self.key", ".attention.self.value"),
         "attention output": (".attention.output.dense",),
         "FFN in": (".intermediate.dense",),
         "FFN out": (".output.dense",)}


def _role(name: str) -> str:
    if reads_gelu(name):
        return "FFN out"
    for role, suffixes in ROLES.items():
        if role != "FFN out" and name.endswith(suffixes):
            return role
    raise ValueError(f"not a BERT layer Linear: {name!r}")


def parts(net, by_layer: bool = False, bits: int = 8) -> dict[str, Callable[[], contextlib.AbstractContextManager]]:
    """Each part's context. ``by_layer`` adds the all-token plan at ``bits`` on one layer at a time
    and on one Linear role at a time (Q/K/V, attention output, FFN in, FFN out) across layers."""
    table = [net.encoder.embeddings.word_embeddings.weight]
    linears = [m.weight for m in encoder_linears(net.encoder).values()]
    out = {
        "embedding table int8 rows": lambda: replaced(table, fake_quant_weight),  # one scale per row
        "embedding table float16": lambda: replaced(table, lambda w: w.half().float()),
        "weights int8 blocks of 32 (dequant)": lambda: replaced(linears, int8_blocks),
        "all-token, 7-bit activations": lambda: simulated_int8(net.encoder, 7),
        "all-token, 8-bit activations": lambda: simulated_int8(net.encoder, 8),
    }
    if by_layer:
        for layer in range(net.encoder.config.num_hidden_layers):
            prefix = f"encoder.layer.{layer}."
            out[f"all-token {bits}-bit, layer {layer} only"] = (
                lambda prefix=prefix: simulated_int8(net.encoder, bits, only=lambda n: n.startswith(prefix)))
        for role in ROLES:
            out[f"all-token {bits}-bit, {role} only (every layer)"] = (
                lambda role=role: simulated_int8(net.encoder, bits, only=lambda n: _role(n) == role))
    return out


def main(argv: list[str] | None = None) -> int:
    from rewardrt.export.pairs import load_pair_set
    from rewardrt.export.reference import TorchReward
    from rewardrt.runtime.clibase import integer

    p = argparse.ArgumentParser(prog="python -m rewardrt.models.sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an fp32 checkpoint folder (e.g. `rewardrt materialize`'s)")
    p.add_argument("--pairs", default=None, metavar="FILE.jsonl",
                   help="reference/response rows (default: the bundled pair set); its held-out part is used")
    p.add_argument("--top", type=integer(0), default=5, help="pairs listed per part (default 5)")
    p.add_argument("--by-layer", action="store_true",
                   help="also the all-token plan on one layer at a time and one Linear role at a time")
    p.add_argument("--bits", type=int, choices=(7, 8), default=8,
                   help="activation-code width of the --by-layer parts (default 8, VNNI's)")
    p.add_argument("--threads", type=integer(1), default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = load_pair_set(args.pairs).gate
    refs, resps = [r["reference"] for r in rows], [r["response"] for r in rows]
    reference = TorchReward(args.checkpoint)  # the export's torch reference: same inputs, same clamp

    def scores() -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(reference.batch_score(resps, refs))

    base = scores()
    print(f"{len(rows)} held-out pairs; clamped score change against the fp32 model")
    for name, context in parts(reference.net, args.by_layer, args.bits).items():
        with context():
            d = np.abs(scores() - base)
        print(f"\n{name}: mean {d.mean():.5f}, max {d.max():.4f}, pairs over 0.025 / 0.05: "
              f"{int((d > 0.025).sum())} / {int((d > 0.05).sum())}")
        for i in np.argsort(-d)[: args.top]:
            print(f"  {d[i]:.3f} (fp32 {base[i]:.3f})  {refs[i][:50]!r}  |  {resps[i][-70:]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
