"""The runtime must work where torch, transformers and onnx cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_runtime_without_torch(tiny_int8):
    code = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "onnx", "safetensors"):
                    raise ImportError(f"blocked {{name}}")
        sys.meta_path.insert(0, Block())
        from rewardrt import RewardModel
        m = RewardModel({str(tiny_int8[0])!r})
        s = m.batch_score(["Paris.", "Lyon."], "The capital of France is Paris.")
        assert all(0.0 <= x <= 1.0 for x in s), s
        assert not any(k.split(".")[0] in ("torch", "transformers", "onnx") for k in sys.modules)
        print("ok", s)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")
