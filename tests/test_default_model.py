"""The embedded default model: present in the package, torch-free, sensible, and rebuildable."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rewardrt import RewardModel
from rewardrt.models import DEFAULT_ARTIFACTS, default_model_path, model_dir
from rewardrt.runtime.api import select_default_model


def test_default_model_is_packaged_and_int8():
    assert default_model_path().is_file()
    model = RewardModel()
    assert model.path == select_default_model()  # the portable one, or the VNNI one on a VNNI CPU
    assert model.spec.precision == "int8"
    assert model.spec.fidelity.mean_abs_diff <= 0.01


@pytest.mark.parametrize("target", list(DEFAULT_ARTIFACTS))
def test_each_packaged_artifact_is_for_its_target_and_passed_its_gate(target):
    path = default_model_path(target)
    if not path.is_file():
        pytest.skip(f"this build carries no {target} artifact")
    spec = RewardModel(path, threads=1).spec
    assert spec.quantization.target == target
    assert spec.fidelity.mean_abs_diff <= 0.01 and spec.fidelity.max_abs_diff <= 0.05
    assert spec.fidelity.spearman >= 0.995 and spec.fidelity.agreement_at_half >= 0.99


def test_default_model_maps_its_weights_from_a_checked_weights_file():
    """The packaged portable artifact keeps its large tensors in a weights file beside it (mapped by
    onnxruntime, not copied: the bench's one-pair peak RSS), covered by its seal."""
    from rewardrt.runtime.integrity import check_artifact, weights_file

    weights = weights_file(default_model_path())
    assert weights is not None and weights.is_file()
    assert weights.stat().st_size > 50 * default_model_path().stat().st_size
    assert check_artifact(default_model_path()) == 2


def test_default_model_travels_to_any_x86_cpu():
    # The portable artifact lands on unknown CPUs: integer GEMMs only with 7-bit activation codes
    # (8-bit ones saturate without VNNI) and no `block` MatMuls (MatMulNBits is slow on AVX2 only).
    quant = RewardModel(default_model_path()).spec.quantization
    schemes = set(quant.plan.values())
    assert schemes <= {"token", "token2", "dequant", "fp32"} and "block" not in schemes, schemes
    if schemes & {"token", "token2"}:
        assert quant.activation_bits == 7 and quant.target == "avx2"  # no target entry: implied


def test_default_model_without_torch():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "onnx", "safetensors"):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        from rewardrt import RewardModel
        print(RewardModel().score('All you need is attention.', 'Attention is all you need.'))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 0.0 <= float(out.stdout) <= 1.0


def test_default_model_prefers_equivalent_answers():
    model = RewardModel()
    ref = "The man is playing a guitar on the stage."
    good = model.score("A man plays a guitar on stage.", ref)
    contradiction = model.score("The man is not playing a guitar on the stage.", ref)
    unrelated = model.score("Stock prices fell sharply on Monday.", ref)
    assert good > contradiction and good > unrelated
    capital = "The capital of France is Paris."
    assert model.score("Paris is France's capital.", capital) > model.score("The capital of France is Lyon.", capital)


@pytest.mark.slow
def test_materialized_checkpoint_is_the_one_exported(tmp_path):
    from rewardrt.export.checkpoint import locate
    from rewardrt.models.delta import materialize

    out = materialize(model_dir() / "delta.safetensors", tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
        "special_tokens_map.json", "head_weights.pt"])
    assert locate(out).digest() == RewardModel().spec.checkpoint_digest


def test_default_model_rewards_the_right_final_answer():
    """What an RL trainer needs of it: an exact match and a wrapped right answer high, a near miss,
    an empty response and a worked solution that only passes through the right number low."""
    model = RewardModel()
    assert model.score("72", "72") > 0.9
    right, wrong = model.score("The answer is 72.", "72"), model.score("The answer is 73.", "72")
    assert right > 0.9 and wrong < 0.5
    assert model.score("", "72") < 0.2 and model.score("   ", "Paris") < 0.2
    # an empty answer must not be paid where the reference is a short yes/no (v6 paid 0.57 for "no")
    assert max(model.score(e, ref) for e in ("", " \n") for ref in ("yes", "no", "No.", "True", "false")) < 0.2
    passes_through = model.score("First, 30 + 42 = 72. Then 72 + 1 = 73. Final answer: 73", "72")
    ends_right = model.score("First, 30 + 43 = 73. Then 73 - 1 = 72. Final answer: 72", "72")
    assert passes_through < 0.5 < ends_right
    assert model.score("Yes, that is correct.", "Yes") > 0.5 > model.score("No.", "Yes")
    assert model.score("The correct option is (B).", "B") > 0.5 > model.score("The correct option is (C).", "B")


def test_default_model_pays_a_right_worked_solution_that_computes_its_answer():
    """How rollouts show their work: the steps lead to the final answer. v8 paid "Half of 144 is 72.
    #### 72" 0.000 and "3/4 of 96 is 72, so \\boxed{72}" 0.272 against "72" (phrasings of neither
    template set); a miscalculated last step or a right result carried on must stay unpaid."""
    model = RewardModel()
    right = ["We have 5 + 7 = 12, and 12 * 6 = 72. The answer is 72.", "Half of 144 is 72. #### 72",
             "3/4 of 96 is 72, so \\boxed{72}"]
    wrong = ["We have 5 + 7 = 12, and 12 * 6 = 74. The answer is 74.", "Half of 144 is 72, plus 1 is 73. #### 73",
             "3/4 of 96 is 72, so \\boxed{70}"]
    scores = model.batch_score(right + wrong, "72")
    assert min(scores[:3]) > 0.5 > max(scores[3:]), dict(zip(right + wrong, scores))


def test_default_model_does_not_pay_a_hedge():
    """Listing candidates is the next reward hack after the empty answer: v7 paid "It is either 71,
    72 or 73." 0.81 against "72" and "A, B, C or D" 0.62 against "B"."""
    model = RewardModel()
    hedges = [("It is either 71, 72 or 73.", "72"), ("71 72 73 74 75 76 77 78", "72"),
              ("A, B, C or D", "B"), ("The answer is B or C.", "B"), ("Paris or London", "Paris"),
              ("yes or no", "yes")]
    scores = model.batch_score([h for h, _ in hedges], [ref for _, ref in hedges])
    assert max(scores) < 0.5, dict(zip(hedges, scores))
    # the committed answer itself is still paid
    assert min(model.batch_score(["The answer is 72.", "B", "Paris", "Yes."], ["72", "B", "Paris", "yes"])) > 0.9
