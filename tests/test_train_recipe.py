"""The training recipe's example construction (no training: that is `rewardrt train`)."""

from __future__ import annotations

import collections
import json
import random

import pytest
from conftest import assert_one_line_error

train = pytest.importorskip("rewardrt.models.train")


def _rows():
    return [
        {"a": "A man is playing a guitar.", "b": "A man plays the guitar.", "source": "sick2014",
         "similarity": 0.9, "entailment": "ENTAILMENT"},
        {"a": "The man is not playing a guitar.", "b": "The man is playing a guitar.", "source": "sick2014",
         "similarity": 0.8, "entailment": "CONTRADICTION"},
        {"a": "Prices rose 3 percent in Paris.", "b": "Prices fell in Berlin.", "source": "msrp",
         "similarity": 0.0, "paraphrase": 0},
    ]


def test_alternate_orders_cover_both_orders_over_two_epochs():
    r = train.Recipe(edits_per_rule=2, identity_pairs=2, alternate_orders=True)
    pairs = train.build_examples(_rows(), r, random.Random(0))
    e0, e1 = train.epoch_examples(pairs, 0, r), train.epoch_examples(pairs, 1, r)
    assert len(e0) == len(e1) == len(pairs)
    assert sorted(e0 + e1) == sorted(e for pair in pairs for e in pair)
    both = train.epoch_examples(pairs, 0, train.Recipe(alternate_orders=False))
    assert len(both) == 2 * len(pairs)


def test_targets_and_identity_pairs():
    r = train.Recipe(edits_per_rule=2, identity_pairs=3, contradiction_scale=0.5, kept_target=1.0)
    pairs = train.build_examples(_rows(), r, random.Random(0))
    assert pairs[1][0] == ("The man is not playing a guitar.", "The man is playing a guitar.", pytest.approx(0.4))
    targets = {(a, b): t for pair in pairs for a, b, t in pair}
    assert targets[("Prices rose 3 percent in Paris.", "Prices fell in Berlin.")] == r.non_paraphrase_target
    identity = [t for (a, b), t in targets.items() if a == b]
    assert len(identity) == 3 and set(identity) == {1.0}
    changed = [t for (a, b), t in targets.items() if a != b and t == r.changed_target]
    assert changed  # negation / number / entity edits of the sentences above
    capped = train.Recipe(contradiction_scale=0.7, contradiction_cap=0.5)
    assert train.target_of(_rows()[1], capped) == 0.5  # 0.7 * 0.8 = 0.56, capped


def test_kept_edits_per_rule_sets_the_meaning_preserving_count_alone():
    rows = [{"a": f"The big man is running with a dog and the woman is smiling {i}.", "b": f"A man runs {i}.",
             "source": "sick2014", "similarity": 0.5, "entailment": "NEUTRAL"} for i in range(12)]
    count = lambda r: collections.Counter(  # noqa: E731
        "kept" if t == r.kept_target else "changed"
        for pair in train.build_examples(rows, r, random.Random(0))[len(rows):] for _, _, t in pair[:1])
    same = train.Recipe(edits_per_rule=3)
    more = train.Recipe(edits_per_rule=3, kept_edits_per_rule=6)
    assert count(same) == {"kept": 3 * 3, "changed": 4 * 3}  # synonym/filler/reorder; the rest
    assert count(more) == {"kept": 3 * 6, "changed": 4 * 3}
    # unset: the same examples as before the option existed
    assert train.build_examples(rows, same, random.Random(0)) == train.build_examples(
        rows, train.Recipe(edits_per_rule=3, kept_edits_per_rule=None), random.Random(0))
    with pytest.raises(ValueError, match="kept_edits_per_rule"):
        train.Recipe(kept_edits_per_rule=-1)


def test_edit_change_names_the_words_out_and_in():
    near = train.edit_change("A dog is near the water.", "A dog is close to the water.")
    assert near == (("near",), ("close", "to"))
    assert train.edit_change("The Man said so.", "The Guy said so.") == (("man",), ("guy",))
    assert train.edit_change("Same.", "Same.") == ((), ())


def test_max_edits_per_change_spreads_word_list_edits():
    # every sentence offers one synonym swap only ('big' -> 'large'): with a cap of 2, two of them
    rows = [{"a": f"The big house number {i} is red.", "b": f"A house {i}.", "source": "sick2014",
             "similarity": 0.5, "entailment": "NEUTRAL"} for i in range(12)]
    r = train.Recipe(edits_per_rule=8, identity_pairs=0, max_edits_per_change=2)
    pairs = train.build_examples(rows, r, random.Random(0))[len(rows):]
    changes = collections.Counter(train.edit_change(a, b) for (a, b, t), _ in pairs if t == r.kept_target)
    assert changes[(("big",), ("large",))] == 2
    uncapped = train.build_examples(rows, train.Recipe(edits_per_rule=8, identity_pairs=0), random.Random(0))
    assert sum(train.edit_change(a, b) == (("big",), ("large",)) for (a, b, _), _ in uncapped) > 2
    # rules without a word list (number swaps here) are not capped
    numbers = [p for p in pairs if any(ch.isdigit() for ch in "".join(train.edit_change(p[0][0], p[0][1])[1]))]
    assert len(numbers) == 8
    # a rule left out of spread_rules is not capped
    only_antonyms = train.Recipe(edits_per_rule=8, identity_pairs=0, max_edits_per_change=2,
                                 spread_rules=["antonym"])
    pairs = train.build_examples(rows, only_antonyms, random.Random(0))[len(rows):]
    assert sum(train.edit_change(a, b) == (("big",), ("large",)) for (a, b, _), _ in pairs) > 2
    with pytest.raises(ValueError, match="max_edits_per_change"):
        train.Recipe(max_edits_per_change=0)
    with pytest.raises(ValueError, match="spread_rules"):
        train.Recipe(spread_rules=["negation"])


def test_shipped_recipe_loads(tmp_path):
    from rewardrt.models import model_dir

    from rewardrt.models.soup import SoupRecipe, is_soup

    path = model_dir() / "recipe.json"
    if is_soup(path):  # an average of trained runs
        soup = SoupRecipe.load(path)
        assert sum(soup.average.values()) == pytest.approx(1.0)
        recipes = [train.Recipe.load(soup.folder / run.recipe, run.set) for run in soup.runs]
    else:
        recipes = [train.Recipe.load(path)]
    assert all(r.trainable_layers <= 6 for r in recipes)
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps({"epochs": 1, "nonsense": 2}))
    with pytest.raises(ValueError, match="nonsense"):
        train.Recipe.load(bad)


def test_trial_recipes_load_and_name_data_files_relative_to_the_data_folder():
    from pathlib import Path

    trials = sorted((Path(__file__).parents[1] / "models" / "equiv-minilm-l6" / "trials").glob("*.json"))
    assert trials
    from rewardrt.models.soup import SoupRecipe, is_soup

    for path in trials:
        if is_soup(path):
            SoupRecipe.load(path)  # its runs' recipes are trials too, checked here themselves
            continue
        r = train.Recipe.load(path)
        # read from --data / $REWARDRT_DATA, never from a path outside the repository
        assert (r.train_data, r.dev_data) == ("pairs-train.jsonl", "pairs-dev.jsonl"), path


@pytest.mark.slow
def test_pack_stores_float16_released_tensors_losslessly(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from rewardrt.models.base import base_model_dir, write_checkpoint
    from rewardrt.models.delta import materialize, pack

    weights = load_file(str(base_model_dir() / "model.safetensors"))
    weights.pop("embeddings.position_ids", None)
    g = torch.Generator().manual_seed(0)
    name16 = "encoder.layer.5.attention.self.query.weight"
    name32 = "encoder.layer.5.output.dense.bias"
    w = weights[name16]
    weights[name16] = (w + 1e-3 * torch.randn(w.shape, generator=g)).half().float()  # released at fp16
    weights[name32] = weights[name32] + 1e-7                                           # not fp16-exact
    head = {"1.weight": torch.randn(1, 768, generator=g), "1.bias": torch.tensor([0.3])}
    ckpt = write_checkpoint(weights, head, tmp_path / "trained")
    info = pack(ckpt, tmp_path / "delta.safetensors")
    assert info["tensors"] == 4
    with safe_open(str(tmp_path / "delta.safetensors"), framework="pt") as f:
        assert f.get_slice(name16).get_dtype() == "F16"
        assert f.get_slice(name32).get_dtype() == "F32"
    out = materialize(tmp_path / "delta.safetensors", tmp_path / "rebuilt")
    rebuilt = load_file(str(out / "model.safetensors"))
    assert all(rebuilt[k].dtype == torch.float32 and torch.equal(rebuilt[k], weights[k]) for k in weights)


def _sts_rows(n=12):
    words = ["cat", "dog", "bird", "fish", "horse", "cow", "goat", "lion", "bear", "wolf", "fox", "owl"]
    return [{"a": f"A {w} runs in the park.", "b": f"The {w} is running.", "source": "sts2012-msrvid",
             "similarity": i / (n - 1)} for i, w in enumerate(words[:n])]


def test_teacher_blends_calibrated_cosine_and_spares_contradictions(monkeypatch):
    torch = pytest.importorskip("torch")
    import rewardrt.export.baselines as baselines

    def fake_embedder(batch_size=64):
        def embed(texts):
            g = torch.Generator().manual_seed(0)
            v = torch.randn(len(texts), 8, generator=g)
            return torch.nn.functional.normalize(v, dim=-1)
        return embed

    monkeypatch.setattr(baselines, "base_embedder", fake_embedder)
    rows = _rows() + _sts_rows()
    r = train.Recipe(edits_per_rule=0, identity_pairs=0, teacher_weight=0.5, teacher_pairs=10)
    plain = train.build_examples(rows, r, random.Random(0))
    taught = train.add_teacher(plain, rows, r, random.Random(0))
    assert taught[1] == plain[1]  # the contradiction keeps its rule target
    assert taught[2] == plain[2]  # "3 percent" on one side only: the teacher is blind to numbers
    sts = range(3, len(rows))
    rule = [plain[i][0][2] for i in sts]
    got = [taught[i][0][2] for i in sts]
    assert got != rule  # blended ...
    for t_rule, t in zip(rule, got):  # ... halfway towards a teacher score on the same 0..1 scale
        teacher = 2 * t - t_rule
        assert min(rule) - 1e-9 <= teacher <= max(rule) + 1e-9
    extra = taught[len(plain):]
    assert len(extra) == 10
    for (a, b, t), (b2, a2, t2) in extra:
        assert (a, b, t) == (a2, b2, t2) and a != b and 0.0 <= t <= 1.0


def test_selection_prefers_evaluations_within_the_confound_limit():
    from rewardrt.models.train import Recipe, prefer

    within = {"confound": 0.05, "selection": 0.60}
    over = {"confound": 0.09, "selection": 0.70}
    assert prefer(within, None, 0.06)
    assert prefer(within, over, 0.06) and not prefer(over, within, 0.06)
    # with no limit the selection score alone decides
    assert prefer(over, within, 1.0) and not prefer(within, over, 1.0)
    # both over the limit: the better score still wins, so some checkpoint is always kept
    assert prefer({"confound": 0.08, "selection": 0.8}, over, 0.06)
    with pytest.raises(ValueError, match="max_dev_confound"):
        Recipe(max_dev_confound=1.5)


def test_selection_with_a_synonym_control_limit():
    from rewardrt.models.train import Recipe, prefer

    quiet = {"confound": 0.05, "selection": 0.60, "synonym_noticed": 0.0}
    noisy = {"confound": 0.05, "selection": 0.70, "synonym_noticed": 0.01}
    assert prefer(quiet, noisy, 0.07, 0.0) and not prefer(noisy, quiet, 0.07, 0.0)
    assert prefer(noisy, quiet, 0.07, None)  # no limit: the score decides, as before
    # the confound limit still comes first
    assert prefer(noisy, dict(quiet, confound=0.09), 0.07, 0.0)
    with pytest.raises(ValueError, match="max_dev_synonym_noticed"):
        Recipe(max_dev_synonym_noticed=1.5)


@pytest.mark.parametrize("field, value", [("teacher_weight", 1.5), ("teacher_weight", -0.1),
                                          ("contradiction_cap", 2.0), ("teacher_pairs", -1),
                                          ("hard_contradiction_repeats", -1), ("stop_after_steps", 0),
                                          ("stop_after_steps", "3"), ("stop_after_epochs", 0),
                                          ("short_positive_target", 1.2), ("short_negative_target", 0.5),
                                          ("short_negative_target", -1.5), ("quant_consistency", -1),
                                          ("quant_consistency", True), ("quant_activation_bits", 6),
                                          ("quant_consistency_tail", -1), ("quant_consistency_tail", 1.0),
                                          ("short_answer_empty_share", 1.5), ("quant_simulation", "gauss"),
                                          ("short_answer_hedge_share", -0.1), ("short_answer_hedge_share", True),
                                          ("short_answer_hard_share", 2), ("short_answer_echo_share", -1),
                                          ("short_answer_counterparts", 1), ("short_answer_counterparts", True),
                                          ("alternate_orders", "yes"), ("short_answer_decoys_per_group", 0),
                                          ("short_answer_decoys_per_group", 2.0)])
def test_recipe_rejects_out_of_range_teacher_and_cap(field, value):
    with pytest.raises(ValueError, match=field):
        train.Recipe(**{field: value})


def test_a_negative_short_answer_target_is_a_margin():
    """The loss sees the unclamped head output, so a target below 0 asks near misses to land well
    under the 0.5 line; it is allowed down to -1."""
    assert train.Recipe(short_negative_target=-0.2).short_negative_target == -0.2


def test_hard_contradictions_are_repeated_with_their_targets():
    rows = _rows() + [{"a": "A dog runs in the park.", "b": "A cat sleeps indoors.", "source": "sick2014",
                       "similarity": 0.2, "entailment": "CONTRADICTION"}]  # low overlap: not repeated
    r = train.Recipe(edits_per_rule=0, identity_pairs=0, contradiction_scale=0.5, hard_contradiction_repeats=2)
    pairs = train.build_examples(rows, r, random.Random(0))
    out = train.add_hard_contradictions(pairs, rows, r)
    assert out[: len(pairs)] == pairs
    assert out[len(pairs):] == [pairs[1], pairs[1]]  # the negated guitar pair, target 0.5 * 0.8
    assert out[-1][0][2] == pytest.approx(0.4)
    assert train.add_hard_contradictions(pairs, rows, train.Recipe()) == pairs


def test_training_stops_after_the_recipe_steps_and_keeps_the_best_evaluation(tmp_path):
    """A real (tiny) run of the packaged base: 40 pairs, batch 4, stop after 3 steps."""
    pytest.importorskip("transformers")
    rows = []
    for i in range(20):
        rows += [dict(r, a=f"{r['a']} {i}", b=f"{r['b']} {i}") for r in _rows()[:2]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({
        "train_data": str(data), "dev_data": str(data), "trainable_layers": 1, "epochs": 2,
        "batch_size": 4, "max_length": 32, "edits_per_rule": 0, "eval_every_steps": 2,
        "stop_after_steps": 3, "threads": 1}))
    summary = train.train(recipe, tmp_path / "out")
    assert [h["step"] for h in summary["history"]] == [2, 3]  # the step-2 evaluation, then the stop
    assert summary["selected_step"] in (2, 3)
    assert (tmp_path / "out" / "checkpoint" / "head_weights.pt").exists()
    assert json.loads((tmp_path / "out" / "train_log.json").read_text())["selected_step"] == summary["selected_step"]


def _tiny_run(tmp_path, name, **recipe):
    rows = []
    for i in range(20):
        rows += [dict(r, a=f"{r['a']} {i}", b=f"{r['b']} {i}") for r in _rows()[:2]]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(dict({
        "train_data": str(data), "dev_data": str(data), "trainable_layers": 1, "epochs": 1,
        "batch_size": 4, "max_length": 32, "edits_per_rule": 0, "stop_after_steps": 2, "threads": 1},
        **recipe)))
    return train.train(path, tmp_path / name)


def test_a_run_can_start_from_an_earlier_checkpoint(tmp_path):
    """init_from loads the earlier run's encoder and head: at learning rate 0 they come out unchanged,
    and the synonym-control selection metric is measured when the recipe sets a limit."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file
    import torch

    _tiny_run(tmp_path, "first")
    first = tmp_path / "first" / "checkpoint"
    summary = _tiny_run(tmp_path, "second", init_from=str(first), lr_encoder=0.0, lr_head=0.0,
                        max_dev_synonym_noticed=0.0)
    second = tmp_path / "second" / "checkpoint"
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = torch.load(first / "head_weights.pt"), torch.load(second / "head_weights.pt")
    assert all(torch.equal(ha[k], hb[k]) for k in ha)
    assert not torch.equal(ha["1.weight"], torch.zeros_like(ha["1.weight"]))
    assert all(0.0 <= h["synonym_noticed"] <= 1.0 for h in summary["history"])


def test_int8_consistency_runs_two_passes_with_the_same_dropout(tmp_path, monkeypatch):
    """quant_consistency adds the gap to the simulated INT8 score: at learning rate 0 nothing moves,
    and with the simulation switched off the two passes agree exactly (one dropout mask for both)."""
    pytest.importorskip("transformers")
    import contextlib

    import torch
    from transformers import BertConfig, BertModel

    gaps = []
    real = train._with_int8_gap

    def spy(*args):
        raw, squared = real(*args)
        gaps.append(squared.mean().item())
        return raw, squared

    # the tail term: + weight x the mean of the batch's TAIL_GAPS largest squared gaps
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   intermediate_size=128)).eval()
    net = train.RewardNet(encoder, train.make_head(32)).eval()  # eval: no dropout
    with torch.no_grad():
        net.head[1].bias.fill_(0.5)
    ids, mask = torch.randint(5, 90, (6, 7)), torch.ones(6, 7, dtype=torch.long)
    _, squared = real(net, ids, mask, 7)
    mean_only, with_tail = train.int8_gap_loss(squared, 1.0), train.int8_gap_loss(squared, 1.0, 2.0)
    assert 0 < mean_only < with_tail <= mean_only * (1 + 2 * 6 / train.TAIL_GAPS) + 1e-12

    monkeypatch.setattr(train, "_with_int8_gap", spy)
    _tiny_run(tmp_path, "on", quant_consistency=10.0, quant_activation_bits=7)
    assert len(gaps) == 2 and all(g > 0 for g in gaps)
    gaps.clear()
    monkeypatch.setattr(train, "simulated_int8", lambda encoder, bits, noise_seed=None: contextlib.nullcontext())
    _tiny_run(tmp_path, "off", quant_consistency=10.0)
    assert gaps == [0.0, 0.0]


def test_init_from_must_share_the_base(tmp_path):
    pytest.importorskip("transformers")
    from rewardrt.export.errors import CheckpointError

    _tiny_run(tmp_path, "first")
    other = tmp_path / "first" / "checkpoint"
    (other / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    with pytest.raises(CheckpointError, match="init_from .*vocab.txt"):
        _tiny_run(tmp_path, "second", init_from=str(other))


def _soup_files(tmp_path, runs, average):
    (tmp_path / "a.json").write_text(json.dumps({"epochs": 1}))
    (tmp_path / "soup.json").write_text(json.dumps({"runs": runs, "average": average}))
    return tmp_path / "soup.json"


def test_soup_recipe_loads_and_names_what_is_wrong(tmp_path):
    soup = pytest.importorskip("rewardrt.models.soup")
    ok = [{"name": "a", "recipe": "a.json", "set": {"stop_after_steps": 5}},
          {"name": "b", "recipe": "a.json", "init_from_run": "a"}]
    recipe = soup.SoupRecipe.load(_soup_files(tmp_path, ok, {"a": 1, "b": 3}))
    assert recipe.average == {"a": 0.25, "b": 0.75} and recipe.runs[0].set == {"stop_after_steps": 5}
    assert soup.is_soup(tmp_path / "soup.json") and not soup.is_soup(tmp_path / "a.json")
    bad = [
        (ok, {"c": 1}, "'c', which is not a run"),
        (ok, {"a": 0}, "weight of 'a'"),
        (ok, {"a": True}, "weight of 'a'"),
        ([ok[1], ok[0]], {"a": 1}, "must be an earlier run"),
        ([ok[0], ok[0]], {"a": 1}, "used twice"),
        ([{"name": "a", "recipe": "missing.json"}], {"a": 1}, "no recipe file 'missing.json'"),
        ([{"name": "a", "recipe": "a.json", "set": {"nonsense": 1}}], {"a": 1}, "unknown overrides.*nonsense"),
        ([{"name": "a", "recipe": "a.json", "set": {"trainable_layers": 9}}], {"a": 1}, "trainable_layers"),
        ([{"name": "a"}], {"a": 1}, r"runs\[0\] must be an object with 'name' and 'recipe'"),
        ([ok[0], {"name": "b", "recipe": "a.json", "init_from_average": {"a": 1, "c": 1}}], {"b": 1},
         "init_from_average names 'c', which is not an earlier run"),
        ([ok[0], {"name": "b", "recipe": "a.json", "init_from_average": {"a": 0}}], {"b": 1}, "weight of 'a'"),
        ([ok[0], {"name": "b", "recipe": "a.json", "init_from_run": "a", "init_from_average": {"a": 1}}],
         {"b": 1}, "more than one of init_from, init_from_run and init_from_average"),
    ]
    for runs, average, message in bad:
        with pytest.raises(ValueError, match=message):
            soup.SoupRecipe.load(_soup_files(tmp_path, runs, average))


def test_average_checkpoints_keeps_untrained_tensors_and_rounds_like_a_release(tmp_path):
    torch = pytest.importorskip("torch")
    soup = pytest.importorskip("rewardrt.models.soup")
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    frozen = torch.randn(4, 3, generator=g)
    members = {}
    for name, w in (("a", 0.3), ("b", 0.7)):
        d = tmp_path / name
        d.mkdir()
        trained = torch.randn(5, generator=g).half().float()
        save_file({"frozen": frozen, "trained": trained}, str(d / "model.safetensors"))
        torch.save({"1.weight": torch.randn(1, 6, generator=g), "1.bias": torch.tensor([0.1])}, d / "head_weights.pt")
        members[d] = w
    enc, head = soup.average_checkpoints(members, "float16")
    a, b = (torch.load(d / "head_weights.pt") for d in members)
    assert torch.equal(enc["frozen"], frozen)  # bit-identical in every member: not re-summed
    from safetensors.torch import load_file
    ta, tb = (load_file(str(d / "model.safetensors"))["trained"] for d in members)
    assert torch.equal(enc["trained"], (0.3 * ta + 0.7 * tb).half().float())
    assert enc["trained"].dtype == torch.float32
    assert torch.allclose(head["1.weight"], 0.3 * a["1.weight"] + 0.7 * b["1.weight"])
    exact, _ = soup.average_checkpoints(members, "float32")
    assert torch.allclose(exact["trained"], 0.3 * ta + 0.7 * tb) and not torch.equal(exact["trained"], enc["trained"])


@pytest.mark.slow
def test_train_soup_trains_in_order_resumes_and_averages(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    soup = pytest.importorskip("rewardrt.models.soup")
    from safetensors.torch import load_file

    rows = _rows() + _sts_rows(8) + [
        {"a": "A woman is slicing an onion.", "b": "A woman cuts an onion.", "source": "sick2014",
         "similarity": 0.95, "entailment": "ENTAILMENT"},
        {"a": "Shares fell 5 percent on Monday.", "b": "Shares dropped 5 percent on Monday.", "source": "msrp",
         "similarity": 1.0, "paraphrase": 1},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    small = {"train_data": "pairs.jsonl", "dev_data": "pairs.jsonl", "trainable_layers": 1, "epochs": 1,
             "batch_size": 4, "max_length": 32, "edits_per_rule": 1, "threads": 1, "release_precision": "float16"}
    (tmp_path / "a.json").write_text(json.dumps(small))
    (tmp_path / "b.json").write_text(json.dumps({**small, "seed": 14, "lr_encoder": 1e-5}))
    (tmp_path / "soup.json").write_text(json.dumps({
        "runs": [{"name": "a", "recipe": "a.json", "set": {"stop_after_steps": 2}},
                 {"name": "b", "recipe": "b.json", "set": {"stop_after_steps": 1}, "init_from_run": "a"}],
        "average": {"a": 1, "b": 3}}))
    out = tmp_path / "out"
    first = soup.train_soup(tmp_path / "soup.json", out, cpus=2, data=tmp_path)
    assert {n: s["selected_step"] for n, s in first["runs"].items()} == {"a": 2, "b": 1}
    assert "starting from " + str((out / "runs" / "a" / "checkpoint").resolve()) in \
        (out / "runs" / "b" / "train.log").read_text()
    expected, head = soup.average_checkpoints({out / "runs" / "a" / "checkpoint": 0.25,
                                               out / "runs" / "b" / "checkpoint": 0.75}, "float16")
    got = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert set(json.loads((out / "train_log.json").read_text())["dev"]) >= {"confound", "selection"}

    # a continuation of the soup: a run started from the average of a and b (at learning rate 0 it
    # releases that average unchanged)
    (tmp_path / "cont.json").write_text(json.dumps({"runs": [
        {"name": "a", "recipe": "a.json", "set": {"stop_after_steps": 2}},
        {"name": "b", "recipe": "b.json", "set": {"stop_after_steps": 1}, "init_from_run": "a"},
        {"name": "c", "recipe": "a.json", "set": {"stop_after_steps": 1, "lr_encoder": 0.0, "lr_head": 0.0},
         "init_from_average": {"a": 1, "b": 3}}], "average": {"c": 1}}))
    cont = soup.train_soup(tmp_path / "cont.json", tmp_path / "cont", cpus=2, data=tmp_path)
    assert cont["runs"]["c"]["selected_step"] == 1
    expected, _ = soup.average_checkpoints({tmp_path / "cont" / "runs" / "a" / "checkpoint": 0.25,
                                            tmp_path / "cont" / "runs" / "b" / "checkpoint": 0.75}, "float16")
    start = load_file(str(tmp_path / "cont" / "runs" / "c" / "start" / "model.safetensors"))
    released = load_file(str(tmp_path / "cont" / "checkpoint" / "model.safetensors"))
    assert all(torch.equal(start[k], expected[k]) and torch.equal(released[k], expected[k]) for k in expected)

    caplog.set_level("INFO", logger="rewardrt.models.soup")
    soup.train_soup(tmp_path / "soup.json", out, data=tmp_path)  # nothing changed: both runs reused
    assert "run a: reusing" in caplog.text and "run b: reusing" in caplog.text
    caplog.clear()
    (tmp_path / "a.json").write_text(json.dumps({**small, "seed": 7}))  # a changes, so b's start does
    soup.train_soup(tmp_path / "soup.json", out, data=tmp_path)
    assert "reusing" not in caplog.text and "run b: training" in caplog.text


def test_training_without_data_says_what_data_is_needed(tmp_path, monkeypatch, cli):
    monkeypatch.delenv("REWARDRT_DATA", raising=False)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"trainable_layers": 1}))  # pairs-train.jsonl, relative to --data
    assert_one_line_error(*cli(["train", "--recipe", str(recipe), "--out", str(tmp_path / "out")])[::2],
                          r"training needs labelled sentence pairs .*--data DIR.*REWARDRT_DATA")
    assert_one_line_error(*cli(["train", "--recipe", str(recipe), "--data", str(tmp_path / "nowhere")])[::2],
                          r"--data .* is not a folder")
    assert_one_line_error(*cli(["train", "--recipe", str(recipe), "--data", str(tmp_path)])[::2],
                          r"pairs-train.jsonl.* does not exist")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, match", [
    ('{"b": "x", "source": "s", "similarity": 0.5}', r"bad.jsonl:2: field 'a' is missing"),
    ('{"a": "x", "b": 3, "source": "s", "similarity": 0.5}', r"bad.jsonl:2: field 'b' must be a string, got int"),
    ('{"a": "  ", "b": "x", "source": "s", "similarity": 0.5}', r"bad.jsonl:2: field 'a' \(the reference\) is empty"),
    ('{"a": "x", "b": "y", "source": "s", "similarity": 7}', r"bad.jsonl:2: field 'similarity' must be a number in 0..1"),
    ('[1, 2]', r"bad.jsonl:2: expected a JSON object"),
    ('{oops', r"bad.jsonl:2: not JSON"),
])
def test_bad_training_rows_name_file_line_and_field(tmp_path, line, match):
    good = json.dumps({"a": "x", "b": "y", "source": "s", "similarity": 0.5})
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(train.DataError, match=match):
        train.read_pairs(path)


def test_short_answer_examples_join_the_training_pairs():
    import random

    r = train.Recipe(short_answer_groups=3, edits_per_rule=0)
    pairs = train.build_examples(_rows(), r, random.Random(0))
    short = pairs[len(_rows()):]
    assert len(short) > 3 * 8 * 3
    assert all(a == b for a, b in short)  # the reference first in both epochs
    assert {t for (_, _, t), _ in short} == {r.short_positive_target, r.short_negative_target}


def test_a_malformed_training_file_is_one_line_and_writes_nothing(tmp_path, cli):
    (tmp_path / "pairs-train.jsonl").write_text('{"a": "x", "b": "y", "source": "s", "similarity": 2}\n')
    (tmp_path / "pairs-dev.jsonl").write_text('{"a": "x", "b": "y", "source": "s", "similarity": 0.5}\n')
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"trainable_layers": 1}))
    assert_one_line_error(
        *cli(["train", "--recipe", str(recipe), "--data", str(tmp_path), "--out", str(tmp_path / "out")])[::2],
        r"pairs-train.jsonl:1: field 'similarity' must be a number in 0..1")
    assert not (tmp_path / "out").exists()


def test_empty_pairs_put_the_reference_first_at_empty_target_and_leave_old_recipes_alone():
    from rewardrt.models.shortanswers import EMPTY_RESPONSES

    base = train.Recipe(edits_per_rule=2, identity_pairs=2)
    before = train.build_examples(_rows(), base, random.Random(0))
    assert before == train.build_examples(_rows(), train.Recipe(edits_per_rule=2, identity_pairs=2, empty_pairs=0),
                                          random.Random(0))
    r = train.Recipe(edits_per_rule=2, identity_pairs=2, empty_pairs=3, empty_target=-0.25)
    pairs = train.build_examples(_rows(), r, random.Random(0))
    assert pairs[: len(before)] == before
    empty = pairs[len(before):]
    assert len(empty) == 3 and all(p[0] == p[1] for p in empty)
    assert all(b in EMPTY_RESPONSES and a.strip() and t == -0.25 for (a, b, t), _ in empty)
    for bad in ({"empty_pairs": -1}, {"empty_pairs": True}, {"empty_target": 0.5}, {"empty_target": "0"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            train.Recipe(**bad)
