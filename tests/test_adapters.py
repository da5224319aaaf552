"""Trainer adapters, called with the shapes TRL, verl and OpenRLHF pass (no framework installed)."""

from __future__ import annotations

import multiprocessing
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rewardrt.runtime.chat import CHAT_TOKENS, parse_strip_tokens, strip_chat_tokens, strip_prompt
from rewardrt.runtime.integrations import rl as adapters
from rewardrt.runtime.integrations.rl import (TRLReward, compute_score, compute_score_batch, compute_score_batch_float,
                                              compute_score_float, completion_text, reward_func, set_default_model,
                                              trl_reward_fn)
from rewardrt.runtime.api import RewardModel

REF = "The capital of France is Paris."
CLEAN = ["Paris.", "Lyon.", "It is Paris, of course.", "72"]
# one trailing (or padding) token sequence per template family, as decoding with special tokens leaves it
ENDINGS = ["<|im_end|>", "<|eot_id|>", "</s>", "<|endoftext|><|endoftext|>", "<end_of_turn>\n",
           "<\uff5cend\u2581of\u2581sentence\uff5c>", "<|end|><|endoftext|>", "<|im_end|>\n<|im_start|>"]


def with_tokens(texts):
    return [t + ENDINGS[i % len(ENDINGS)] for i, t in enumerate(texts)]


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


def test_strip_chat_tokens():
    assert strip_chat_tokens("Paris.<|im_end|>\n<|endoftext|>") == "Paris.\n"
    assert strip_chat_tokens("<s>[INST] q [/INST] a</s>") == " q  a"
    assert strip_chat_tokens("a < b and c > d") == "a < b and c > d"  # only whole tokens
    assert strip_chat_tokens("Paris.<|im_end|>", None) == "Paris.<|im_end|>"
    assert strip_chat_tokens("x<my>y", ["<my>"]) == "xy"
    with pytest.raises(ValueError, match="strip_tokens\\[1\\] must be a non-empty str"):
        strip_chat_tokens("x", ["<a>", ""])
    with pytest.raises(TypeError, match="strip_tokens must be a list of str or None"):
        strip_chat_tokens("x", "<a>")
    # the prompt and the query lose the same tokens, so left padding does not hide the prompt
    prompt = "<|im_start|>user\nCapital?<|im_end|>\n<|im_start|>assistant\n"
    query = "<|endoftext|><|endoftext|>" + prompt + "Paris.<|im_end|><|endoftext|>"
    assert strip_prompt(query, prompt, CHAT_TOKENS) == "Paris."


def test_parse_strip_tokens():
    assert parse_strip_tokens("default") == CHAT_TOKENS
    assert parse_strip_tokens("none") == () and parse_strip_tokens("") == ()
    assert parse_strip_tokens("default,<|my_eot|>") == CHAT_TOKENS + ("<|my_eot|>",)
    assert parse_strip_tokens("<a>, <b>") == ("<a>", "<b>")
    with pytest.raises(ValueError, match="REWARDRT_STRIP_TOKENS: empty item"):
        parse_strip_tokens("<a>,,<b>")
    with pytest.raises(ValueError, match="'none' cannot be combined"):
        parse_strip_tokens("none,<a>")


def test_completion_text_shapes():
    assert completion_text("plain") == "plain"
    convo = [{"role": "assistant", "content": "first"}, {"role": "tool", "content": "x"},
             {"role": "assistant", "content": "last"}]
    assert completion_text(convo) == "last"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"},
                                               {"type": "text", "text": "b"}]}]
    assert completion_text(parts) == "ab"
    with pytest.raises(ValueError, match="without an assistant message \\(roles: user\\)"):
        completion_text([{"role": "user", "content": "q"}], "completions[3]")
    with pytest.raises(TypeError, match="completions\\[0\\] must be a str or a list of chat messages"):
        completion_text(42, "completions[0]")
    # messages without a role: the last one is the reply; content None (tool calls only) is empty
    assert completion_text([{"content": "only"}]) == "only"
    assert completion_text([{"content": "a"}, {"content": "b"}]) == "b"
    assert completion_text([{"role": "assistant", "content": None, "tool_calls": [{}]}]) == ""
    assert completion_text([{"role": "assistant", "content": ["a", {"type": "text", "text": "b"}]}]) == "ab"
    with pytest.raises(TypeError, match=r"completions\[2\]\[0\] must be a chat message dict"):
        completion_text(["not a message"], "completions[2]")
    with pytest.raises(ValueError, match=r"completions\[1\]\[0\] has no 'content'"):
        completion_text([{"role": "assistant"}], "completions[1]")
    with pytest.raises(TypeError, match=r"completions\[0\]\[0\].content\[1\] must be a str or a content part"):
        completion_text([{"role": "assistant", "content": ["a", 3]}], "completions[0]")
    with pytest.raises(TypeError, match=r"content\[0\]: a text part needs 'text' as a str"):
        completion_text([{"role": "assistant", "content": [{"type": "text"}]}])
    with pytest.raises(ValueError, match="empty conversation"):
        completion_text([], "completions[0]")


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


def test_trl_reward_pickles_and_keeps_its_name(model, tiny_int8):
    """Async GRPO and multiprocessing pickle the reward; it must arrive whole, model included."""
    fn = TRLReward(tiny_int8[0], reference_column="answer", name="equiv")
    assert fn.__name__ == "equiv"
    clone = pickle.loads(pickle.dumps(fn))
    assert clone.__name__ == "equiv" and clone.reference_column == "answer"
    assert clone(prompts=["p"] * 4, completions=CLEAN, answer=[REF] * 4) == model.batch_score(CLEAN, REF)
    assert pickle.loads(pickle.dumps(model)).batch_score(CLEAN, REF) == model.batch_score(CLEAN, REF)


def test_a_model_loaded_by_relative_path_unpickles_elsewhere(tiny_int8, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_int8[0].parent)
    data = pickle.dumps(RewardModel(tiny_int8[0].name))
    monkeypatch.chdir(tmp_path)
    assert pickle.loads(data).path == tiny_int8[0].resolve()


def _call_in_child(fn):
    return fn(prompts=["p"] * 4, completions=with_tokens(CLEAN), answer=[REF] * 4)


def test_trl_reward_runs_in_a_spawned_process(model, tiny_int8):
    fn = trl_reward_fn(tiny_int8[0])
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_call_in_child, (fn,)) == model.batch_score(CLEAN, REF)


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
    assert got == {"score": default.score("Paris.", REF), "truncated": False}
    assert type(got["score"]) is float
    flat = compute_score_float(data_source="openai/gsm8k", solution_str="Paris.", ground_truth=REF,
                               extra_info=None)
    assert type(flat) is float and flat == got["score"]
    with pytest.raises(TypeError, match="ground_truth must be a str.*reward_model.ground_truth"):
        compute_score("src", "Paris.", None)
    long = " ".join(["word"] * 600)
    assert compute_score("src", long, REF)["truncated"] is True


def test_verl_compute_score_batch(default):
    # BatchRewardManager passes numpy object arrays and one extra_info dict per item
    data_sources = np.array(["a", "b", "a"], dtype=object)
    solutions = ["Paris.", "Lyon.", "Paris is the capital."]
    truths = np.array([REF, REF, "Paris"], dtype=object)
    extras = [{"rollout_reward_scores": {}}] * 3
    got = compute_score_batch(data_sources=data_sources, solution_strs=solutions, ground_truths=truths,
                              extra_infos=extras)
    expected = default.batch_score(solutions, list(truths))
    assert got == [{"score": x, "truncated": False} for x in expected]
    assert compute_score_batch_float(data_sources=data_sources, solution_strs=solutions, ground_truths=truths,
                                     extra_infos=extras) == expected
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
    # the prompt goes, and so do the chat tokens of the unmatched query (none here)
    expected = default.batch_score(["Paris.", queries[1]], labels)
    assert got == {"rewards": expected, "scores": expected, "extra_logs": {}}
    assert all(type(x) is float for x in got["rewards"])
    # current OpenRLHF calls it once per sample, with one-element lists
    one = reward_func([queries[0]], [prompts[0]], [labels[0]])
    assert one["rewards"] == [default.score("Paris.", REF)]


# --- chat tokens: every RL path scores the clean text -------------------------------------------------

def test_trailing_chat_tokens_score_exactly_as_the_clean_texts(default, monkeypatch):
    monkeypatch.delenv(adapters.ENV_STRIP_TOKENS, raising=False)
    clean = default.batch_score(CLEAN, REF)
    dirty = with_tokens(CLEAN)
    assert default.batch_score(dirty, REF) != clean  # as text, the tokens do change the scores
    refs = [REF] * len(CLEAN)
    assert trl_reward_fn(default)(prompts=["q"] * 4, completions=dirty, answer=refs) == clean
    convo = [[{"role": "assistant", "content": d}] for d in dirty]
    assert trl_reward_fn(default)(prompts=["q"] * 4, completions=convo, answer=refs) == clean
    assert [compute_score("s", d, REF)["score"] for d in dirty] == clean
    assert compute_score_batch_float(["s"] * 4, dirty, refs) == clean
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    queries = ["<|endoftext|>" + prompt + d for d in dirty]  # left padding, prompt, response, end of turn
    assert reward_func(queries, [prompt] * 4, refs)["rewards"] == clean
    # the off switch, per adapter and per process
    assert trl_reward_fn(default, strip_tokens=None)(completions=dirty, answer=refs) == default.batch_score(dirty, REF)
    assert compute_score_batch_float(["s"] * 4, dirty, refs, strip_tokens=None) == default.batch_score(dirty, REF)
    monkeypatch.setenv(adapters.ENV_STRIP_TOKENS, "none")
    assert reward_func(dirty, None, refs)["rewards"] == default.batch_score(dirty, REF)
    monkeypatch.setenv(adapters.ENV_STRIP_TOKENS, "<|im_end|>")  # a list of one's own
    assert compute_score("s", "Paris.<|im_end|>", REF)["score"] == clean[0]
    assert compute_score("s", "Paris.</s>", REF)["score"] == default.score("Paris.</s>", REF)


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
        import rewardrt.runtime.integrations.rl
        from rewardrt.runtime.serve import ServeConfig
        ServeConfig()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
