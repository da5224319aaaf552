"""``make demo``: score with the embedded default model torch-free, export its checkpoint to a
verified INT8 artifact, score with that in a process where torch cannot be imported, and time it
side by side with the PyTorch reference."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

PAIRS = [
    ("72", "72"),
    ("72", "The answer is 72."),
    ("72", "First, 30 + 43 = 73. Then 73 - 1 = 72. Final answer: 72"),
    ("72", "The answer is 73."),
    ("72", "First, 30 + 42 = 72. Then 72 + 1 = 73. Final answer: 73"),
    ("1/2", "0.5"),
    ("1/2", "2"),
    ("Yes", "Yes, that is correct."),
    ("Yes", "No."),
    ("B", "The correct option is (B)."),
    ("B", "The correct option is (C)."),
    ("72", ""),
    ("The capital of France is Paris.", "Paris is France's capital."),
    ("The capital of France is Paris.", "The capital of France is Lyon."),
    ("Water boils at 100 degrees Celsius at sea level.", "At sea level water boils at 100 °C."),
    ("Water boils at 100 degrees Celsius at sea level.", "Water does not boil at 100 degrees Celsius."),
    ("Attention is all you need.", "All you need is attention."),
]
WORK = Path(".artifacts/demo")

TORCH_FREE = """
import sys, json
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "onnx"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from rewardrt import RewardModel
model = RewardModel(sys.argv[1] if len(sys.argv) > 1 else None)
pairs = json.loads(sys.stdin.read())
scores = model.batch_score([b for a, b in pairs], [a for a, b in pairs])
print(f"  model: {model.path.name} ({model.spec.precision}); torch imported: {'torch' in sys.modules}")
for (a, b), s in zip(pairs, scores):
    print(f"  {s:.3f}  {a!r} vs {b!r}")
"""


def torch_free_scores(model_path: Path | None) -> None:
    import json

    args = [sys.executable, "-c", textwrap.dedent(TORCH_FREE)] + ([str(model_path)] if model_path else [])
    out = subprocess.run(args, input=json.dumps(PAIRS), capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"torch-free scoring failed:\n{out.stderr}")
    print(out.stdout, end="")


def demo_checkpoint() -> tuple[Path, str]:
    """The default model's fp32 checkpoint if it ships, else the packaged MiniLM with a test head."""
    from rewardrt.models import model_dir

    delta = model_dir() / "delta.safetensors"
    if delta.is_file():
        from rewardrt.models.delta import materialize

        import hashlib

        digest = hashlib.sha256(delta.read_bytes()).hexdigest()[:16]
        out = Path(f".artifacts/equiv-minilm-l6/materialized-{digest}")  # a new delta, a new folder
        if not (out / "head_weights.pt").is_file():
            materialize(delta, out)
        return out, "the default model (materialized from base + shipped delta)"
    import shutil

    import torch

    from rewardrt.models.base import BASE_FILES, base_model_dir

    out = WORK / "minilm-test-head"
    out.mkdir(parents=True, exist_ok=True)
    for name in BASE_FILES:
        shutil.copy2(base_model_dir() / name, out / name)
    g = torch.Generator().manual_seed(0)
    torch.save({"1.weight": torch.randn(1, 768, generator=g) * 0.02, "1.bias": torch.tensor([0.5])},
               out / "head_weights.pt")
    return out, "packaged all-MiniLM-L6-v2 + a seeded test head (no default model yet)"


def latency_line(checkpoint: Path, artifact: Path, calls: int = 30) -> str:
    """Batch-1 ``score()`` of the fresh artifact and of the PyTorch reference (attention as
    upstream neural-txt loads it), 1 thread each, interleaved calls; medians and their ratio."""
    import statistics
    import time

    import torch

    from rewardrt.export.reference import TorchReward
    from rewardrt.runtime import RewardModel

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ours = RewardModel(artifact, threads=1)
        ref = TorchReward(checkpoint, attn_implementation=None)
        times: dict[str, list[float]] = {"torch": [], "rewardrt": []}
        pairs = [p for p in PAIRS if p[1]]
        for i in range(calls + 3):  # 3 warm-up rounds
            a, b = pairs[i % len(pairs)]
            for name, fn in (("torch", ref.score), ("rewardrt", ours.score)):
                t = time.perf_counter()
                fn(b, a)
                if i >= 3:
                    times[name].append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(previous)
    t_ref, t_ours = (statistics.median(times[k]) * 1e3 for k in ("torch", "rewardrt"))
    return (f"  batch-1 score(), 1 thread, median of {calls} interleaved calls: PyTorch reference "
            f"{t_ref:.1f} ms, rewardrt INT8 {t_ours:.1f} ms -> {t_ref / t_ours:.1f}x "
            "(full side-by-side tables: make bench)")


def main() -> int:
    from rewardrt.export.config import ExportConfig
    from rewardrt.export.exporter import export
    from rewardrt.models import default_model_path

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("rewardrt").setLevel(logging.INFO)
    if default_model_path().is_file():
        print("1) the embedded default model, torch-free:")
        torch_free_scores(None)
    else:
        print("1) no embedded default model in this build; skipping")
    ckpt, what = demo_checkpoint()
    WORK.mkdir(parents=True, exist_ok=True)
    out = WORK / "model.int8.onnx"
    print(f"2) export {what}\n   {ckpt} -> {out} (INT8, plan search + fidelity gate)")
    # what `rewardrt export --precision int8` does on this CPU (target auto)
    report = export(ckpt, out, ExportConfig(precision="int8"))
    print(report.describe())
    print("3) the fresh artifact, torch-free:")
    torch_free_scores(out)
    print("4) side by side with the PyTorch reference:")
    print(latency_line(ckpt, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
