"""Trainer adapters, called with the shapes TRL, verl and OpenRLHF pass (no framework installed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rewardrt.runtime import adapters
from rewardrt.runtime.adapters import (compute_score, compute_score_batch, completion_text, reward_func,
                                       set_default_model, strip_prompt, trl_reward_fn)
from rewardrt.runtime.api import RewardModel

REF = "The capital of France is Paris."


@pytest.fixture(scope="module")
def model(tiny_int8) -> RewardModel:
    return RewardModel(tiny_int8[0])


@pytest.fixture
def default(model, monkeypatch):
    """The verl/OpenRLHF default model set to the tiny one, forgotten after the test."""
    monkeypatch.delenv(adapters.ENV_MODEL, raising=False)
    set_default_model(model)
    yield model
    set_default_model(None)


# --- shared rules ------------------------------------------------------------------------------------

def test_strip_prompt_rule():
    assert strip_prompt("Q: 2+2? A: 4", "Q: 2+2? A:") == " 4"
    assert strip_prompt("<|user|>hi<|assistant|>hello", "<|user|>hi<|assistant|>") == "hello"
    assert strip_prompt("something else", "Q: 2+2?") == "something else"  # not a prefix: whole query
    assert strip_prompt("whole", "") == "whole"
    assert strip_prompt("whole", None) == "whole"


def test_completion_text_shapes():
    assert completion_text("plain") == "plain"
    convo = [{"role": "assistant", "content": "first"}, {"role": "tool", "content": "x"},
             {"role": "assistant", "content": "last"}]
    assert completion_text(convo) == "last"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                               {"type": "text", "text": "b"}]}]
    assert completion_text(parts) == "ab"
    with pytest.raises(ValueError, match="without an assistant message"):
        completion_text([{"role": "user", "content": "q"}], "completions[3]")
    with pytest.raises(TypeError, match="completions\\[0\\] must be a str or a list of chat messages"):
        completion_text(42, "completions[0]")


# --- TRL -----------------------------------------------------------------------------------------------

def test_trl_plain_completions(model):
    fn = trl_reward_fn(model, reference_column="answer")
    assert fn.__name__ == "rewardrt"
    prompts = ["What is the capital of France?"] * 3
    completions = ["Paris.", "Lyon.", "Paris, of course."]
    answers = [REF] * 3
    # GRPOTrainer also passes completion_ids, trainer_state and every other dataset column
    got = fn(prompts=prompts, completions=completions, completion_ids=[[1, 2]] * 3,
             trainer_state=object(), answer=answers, level=[1, 2, 3])
    assert got == model.batch_score(completions, answers)
    assert all(type(x) is float for x in got)


def test_trl_conversational_completions(model, tiny_int8):
    fn = trl_reward_fn(tiny_int8[0], reference_column="solution")  # a path works too
    prompts = [[{"role": "user", "content": "Capital of France?"}]] * 2
    completions = [[{"role": "assistant", "content": "Paris."}], [{"role": "assistant", "content": "Rome."}]]
    got = fn(prompts, completions, solution=[REF, "Rome is the capital of Italy."])
    assert got == model.batch_score(["Paris.", "Rome."], [REF, "Rome is the capital of Italy."])


def test_trl_errors_name_the_column(model):
    fn = trl_reward_fn(model, reference_column="answer")
    with pytest.raises(ValueError, match="dataset column 'answer'.*columns passed: \\['solution'\\]"):
        fn(prompts=["p"], completions=["c"], solution=["s"], trainer_state=None)
    with pytest.raises(ValueError, match="column 'answer' gave 1 values for 2 completions"):
        fn(prompts=["p", "q"], completions=["c", "d"], answer=["s"])
    with pytest.raises(TypeError, match="answer\\[1\\] must be a str.*column 'answer'"):
        fn(prompts=["p", "q"], completions=["c", "d"], answer=["s", 7])
    with pytest.raises(TypeError, match="reference_column must be a non-empty str"):
        trl_reward_fn(model, reference_column="")


# --- verl ------------------------------------------------------------------------------------------------

def test_verl_compute_score(default):
    # verl calls it with keywords (and may add its own reward kwargs)
    got = compute_score(data_source="openai/gsm8k", solution_str="Paris.", ground_truth=REF,
                        extra_info={"split": "train", "index": 3}, sandbox_fusion_url=None)
    assert type(got) is float and got == default.score("Paris.", REF)
    with pytest.raises(TypeError, match="ground_truth must be a str.*reward_model.ground_truth"):
        compute_score("src", "Paris.", None)


def test_verl_compute_score_batch(default):
    # BatchRewardManager passes numpy object arrays and one extra_info dict per item
    data_sources = np.array(["a", "b", "a"], dtype=object)
    solutions = ["Paris.", "Lyon.", "Paris is the capital."]
    truths = np.array([REF, REF, "Paris"], dtype=object)
    extras = [{"rollout_reward_scores": {}}] * 3
    got = compute_score_batch(data_sources=data_sources, solution_strs=solutions, ground_truths=truths,
                              extra_infos=extras)
    assert got == default.batch_score(solutions, list(truths))
    with pytest.raises(ValueError, match="2 ground_truths for 3 solution_strs"):
        compute_score_batch(data_sources, solutions, truths[:2], extras)


def test_default_model_from_env(tiny_int8, monkeypatch):
    set_default_model(None)
    monkeypatch.setenv(adapters.ENV_MODEL, str(tiny_int8[0]))
    try:
        assert adapters.default_model().path == tiny_int8[0]
        assert adapters.default_model() is adapters.default_model()  # loaded once
    finally:
        set_default_model(None)
    with pytest.raises(TypeError, match="model must be a RewardModel, a .onnx path or None"):
        set_default_model(3.5)


# --- OpenRLHF ----------------------------------------------------------------------------------------

def test_openrlhf_reward_func(default):
    prompts = ["<|user|>Capital of France?<|assistant|>", "<|user|>2+2?<|assistant|>"]
    queries = [prompts[0] + "Paris.</s>", "decoded differently: 4"]
    labels = [REF, "4"]
    got = reward_func(queries, prompts, labels)
    expected = default.batch_score(["Paris.</s>", queries[1]], labels)
    assert got == {"rewards": expected, "scores": expected, "extra_logs": {}}
    assert all(type(x) is float for x in got["rewards"])
    # current OpenRLHF calls it once per sample, with one-element lists
    one = reward_func([queries[0]], [prompts[0]], [labels[0]])
    assert one["rewards"] == [default.score("Paris.</s>", REF)]


def test_openrlhf_errors(default):
    with pytest.raises(ValueError, match="2 queries, 1 prompts and 2 labels"):
        reward_func(["a", "b"], ["a"], ["x", "y"])
    with pytest.raises(TypeError, match="labels\\[0\\] must be a str.*--label_key"):
        reward_func(["a"], ["a"], [None])


# --- import hygiene --------------------------------------------------------------------------------------

def test_adapters_and_serve_config_import_without_frameworks():
    code = textwrap.dedent("""
        import sys
        BLOCKED = ("torch", "transformers", "trl", "verl", "openrlhf", "starlette", "uvicorn",
                   "prometheus_client")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"blocked {name}")
        sys.meta_path.insert(0, Block())
        import rewardrt.runtime.adapters
        from rewardrt.runtime.serve import ServeConfig
        ServeConfig()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
