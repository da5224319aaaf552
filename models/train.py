"""Training recipe of the default reward model (``rewardrt train`` / ``make model``).

Starts from the packaged all-MiniLM-L6-v2 (or, with ``init_from``, from an earlier run's
checkpoint), trains the top encoder layers and the mean⊕max head with MSE on 0..1
answer-equivalence targets built from labelled sentence pairs (``pairs-train.jsonl`` of the data
folder given with ``--data`` or $REWARDRT_DATA), rule-based minimal edits and generated short
answers (``rewardrt.models.shortanswers``), selects the step on ``pairs-dev.jsonl`` plus held-out
short-answer groups, and writes a full checkpoint in the neuraltxt-reward-tiny layout. Everything
is seeded; the wall time goes into the run log.
"""

from __future__ import annotations

import collections
import difflib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rewardrt.export.quantize.activations import ACTIVATION_BITS
from rewardrt.export.reference import RewardNet, encode_pairs, make_head
from rewardrt.models import shortanswers
from rewardrt.models.base import base_model_dir, unpinned, write_checkpoint
from rewardrt.models.edits import EDITS, WORD
from rewardrt.models.evaluate import NOTICED_DROP, confound_rate, is_confound_pair, swap_probes
from rewardrt.models.quantsim import simulated_int8
from rewardrt.runtime.metrics import spearman, roc_auc

log = logging.getLogger(__name__)

# the edit rules that draw their changes from a word list (models/edits.py)
WORD_LIST_RULES = ("antonym", "entity", "synonym")
DATA_ENV = "REWARDRT_DATA"
DATA_FORMAT = ("JSONL rows with string fields 'a' (reference), 'b' (response), 'source' and a number "
               "'similarity' in 0..1 (optional: 'entailment', 'paraphrase')")


class DataError(ValueError):
    """Training data that is missing or malformed; the message names the file, line and field."""


TAIL_GAPS = 4                          # the batch's largest gaps quant_consistency_tail weighs
QUANT_SIMULATIONS = ("round", "noise")  # how quant_consistency simulates INT8 (Recipe.quant_simulation)


@dataclass
class Recipe:
    """Everything that decides the trained weights. Loaded from the model's recipe.json."""

    train_data: str = "pairs-train.jsonl"   # relative to the data folder (--data), or absolute
    dev_data: str = "pairs-dev.jsonl"
    seed: int = 13
    trainable_layers: int = 3          # top encoder layers unfrozen (of 6)
    epochs: int = 2                    # length of the learning-rate schedule
    stop_after_epochs: int | None = None   # stop early (schedule unchanged); None: run all epochs
    stop_after_steps: int | None = None    # ... or after this many optimizer steps (a dev evaluation
                                           # there too); None: no step limit
    batch_size: int = 32
    max_length: int = 128              # pairs here are short; inference still truncates at 512
    lr_encoder: float = 4e-5
    lr_head: float = 1e-3
    layer_lr_decay: float = 1.0        # layer i (of n) trains at lr_encoder * decay**(n-1-i): lower layers
                                       # move less and keep more of the base model's similarity knowledge
    eval_every_steps: int | None = None  # dev selection also within epochs (None: after each epoch only)
    max_dev_confound: float = 1.0      # selection prefers evaluations whose dev confound rate (SICK
                                       # contradictions with word-F1 >= 0.5 scored > 0.7) is at most this
    max_dev_synonym_noticed: float | None = None  # ... then those whose dev synonym control (the
                                       # `rewardrt eval` probe: one-word synonym swaps of dev references
                                       # scored > 0.15 below the unedited pair) is at most this; None:
                                       # not measured
    init_from: str | None = None       # start from this checkpoint folder (neuraltxt-reward-tiny layout
                                       # over the same base, e.g. an earlier run's checkpoint/ or
                                       # `rewardrt materialize` output) instead of the base + a new head
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    edits_per_rule: int = 2500         # contrastive minimal-edit pairs per rule (each in both orders)
    kept_edits_per_rule: int | None = None  # ... for the meaning-preserving rules (synonym, filler,
                                            # reorder); None: edits_per_rule
    max_edits_per_change: int | None = None  # at most this many edits of a word-list rule (those in
                                       # spread_rules) make the same change (same words out and in, any
                                       # case): spreads its edits over the word list instead of the
                                       # corpus's most frequent words (v3's 250 synonym swaps: 'said'->
                                       # 'stated' 38 times, 'running'->'jogging' 3); None: no limit
    spread_rules: tuple[str, ...] = WORD_LIST_RULES  # the rules it applies to
    identity_pairs: int = 0            # (sentence, same sentence) pairs at kept_target: a perfect answer
    empty_pairs: int = 0               # (sentence, empty or whitespace-only response) pairs at empty_target:
                                       # an RL policy that answers nothing must not be paid (mean and max
                                       # pooling see "X [SEP]" much as "X [SEP] X")
    empty_target: float = 0.0
    alternate_orders: bool = False     # each epoch sees every pair once, in the order opposite to the
                                       # previous epoch's (both orders over two epochs, half the steps)
    # answer-equivalence targets
    contradiction_scale: float = 0.25  # SICK CONTRADICTION: target = scale * relatedness (≈ 0.15-0.25)
    contradiction_cap: float = 1.0     # ... at most this: keeps high-overlap contradictions clear of 0.7
    hard_contradiction_repeats: int = 0  # extra copies of each SICK contradiction with word-F1 >= 0.5
                                         # (the pairs the confound rate counts; lexical overlap misleads)
    neutral_scale: float = 0.85        # SICK NEUTRAL: related but not entailed -> below its relatedness
    paraphrase_target: float = 0.95    # MSRP paraphrase
    non_paraphrase_target: float = 0.25
    changed_target: float = 0.05       # meaning-changing edit
    kept_target: float = 0.95          # meaning-preserving edit
    # Distillation from the base model's own embedding cosine (a strong graded-similarity signal the
    # cross-encoder otherwise has to relearn from 16k pairs). The teacher's cosine is mapped onto each
    # source's target scale by quantile matching on the train pairs; contradictions and edits keep
    # their rule targets (the teacher cannot see negation).
    teacher_weight: float = 0.0        # labelled pair target = (1-w) * rule target + w * teacher
    teacher_pairs: int = 0             # extra unlabelled pairs at the teacher's score: near neighbours
                                       # (70%) and random sentences (30%) within each source
    # The released encoder weights are the trained ones rounded to this precision (kept as fp32 in the
    # checkpoint; the delta then stores them losslessly in half the bytes). "float32": no rounding.
    release_precision: str = "float32"
    # Generated short answers (rewardrt.models.shortanswers, the TRAIN template set): groups per kind,
    # each a reference with same-answer responses at short_positive_target and different-answer ones
    # (near-miss numbers, wrong units, opposite yes/no, other options, off-by-one dates, other
    # entities, worked solutions whose final answer is wrong, empty responses) at short_negative_target.
    # The loss sees the raw head output (the clamp to [0, 1] comes after), so a negative target below 0
    # is a margin: a near miss must land well under 0.5, not just under it.
    short_answer_groups: int = 0
    short_positive_target: float = 1.0
    short_negative_target: float = 0.0
    short_answer_kind_weights: dict = field(default_factory=dict)  # kind -> factor on short_answer_groups
                                       # (kinds left out: 1), e.g. more near-miss numbers, fractions, dates
    short_answer_empty_share: float = 0.15  # share of groups given an empty/whitespace-only negative
    short_answer_hedge_share: float = 0.0   # share of groups given a hedge negative ("72 or 73": the
                                            # right answer among wrong ones, shortanswers.hedge)
    short_answer_hard_share: float = 0.0    # share of groups given shortanswers.hard_cases (numbers in
                                            # words, a fraction's decimal x10, numeric option texts)
    short_answer_echo_share: float = 0.0    # share of groups given an echo positive ("72 or seventy-two":
                                            # the right answer twice, shortanswers.echo)
    short_answer_decoy_share: float = 0.0   # share of number and fraction groups given a decoy negative
                                            # ("0.7" against "1/2": a wrong answer in another form,
                                            # shortanswers.decoy)
    short_answer_counterparts: bool = False # each decoy's counterpart as a positive: the right answer
                                            # in the decoy's form ("0.5" beside "0.7" against "1/2")
    short_answer_decoys_per_group: int = 1  # decoys drawn per chosen group (distinct ones kept)
    short_answer_dev_groups: int = 0   # held-out groups per kind (TRAIN templates, another seed) whose
                                       # pairwise order accuracy joins the dev selection score
    # INT8 consistency: each step also scores the batch with the encoder's Linears on simulated
    # per-token activation codes of quant_activation_bits and int8 weights (rewardrt.models.quantsim,
    # the export's integer-GEMM path; same dropout masks) and adds quant_consistency x the mean
    # squared gap between the two clamped scores, so the weights move where quantization moves the
    # score least. 0: off (one forward a step, as before).
    quant_consistency: float = 0.0
    quant_activation_bits: int = 7
    # ... plus quant_consistency_tail x the mean of the batch's TAIL_GAPS largest squared gaps: the
    # export's gate is a max over pairs, set by a few steep ones a batch mean hardly sees
    quant_consistency_tail: float = 0.0
    # "round": the simulation rounds to nearest (one fixed rounding of the weights, which training
    # can fit itself to); "noise": codes moved by uniform noise of one step, a fresh draw each step
    quant_simulation: str = "round"
    threads: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.release_precision not in ("float32", "float16"):
            raise ValueError(f"release_precision must be 'float32' or 'float16', got {self.release_precision!r}")
        for name in ("teacher_weight", "contradiction_cap", "short_positive_target"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not -1 <= self.short_negative_target < 0.5:
            raise ValueError(f"short_negative_target must be in [-1, 0.5), got {self.short_negative_target}")
        if self.max_edits_per_change is not None and (not isinstance(self.max_edits_per_change, int)
                                                      or self.max_edits_per_change < 1):
            raise ValueError("max_edits_per_change must be a positive int or null, "
                             f"got {self.max_edits_per_change!r}")
        self.spread_rules = tuple(self.spread_rules)
        bad = {k: v for k, v in self.short_answer_kind_weights.items()
               if k not in shortanswers.KINDS or isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
        if bad:
            raise ValueError(f"short_answer_kind_weights maps kinds ({', '.join(shortanswers.KINDS)}) to "
                             f"numbers >= 0; got {bad}")
        unknown = set(self.spread_rules) - set(WORD_LIST_RULES)
        if unknown:
            raise ValueError(f"spread_rules may name {', '.join(WORD_LIST_RULES)} (the word-list rules); "
                             f"got {sorted(unknown)}")
        for name in ("teacher_pairs", "hard_contradiction_repeats", "edits_per_rule", "short_answer_groups",
                     "short_answer_dev_groups"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.max_dev_confound <= 1:
            raise ValueError(f"max_dev_confound must be in [0, 1], got {self.max_dev_confound}")
        if self.max_dev_synonym_noticed is not None and not 0 <= self.max_dev_synonym_noticed <= 1:
            raise ValueError("max_dev_synonym_noticed must be in [0, 1] or null, "
                             f"got {self.max_dev_synonym_noticed}")
        if self.kept_edits_per_rule is not None and (not isinstance(self.kept_edits_per_rule, int)
                                                     or self.kept_edits_per_rule < 0):
            raise ValueError(f"kept_edits_per_rule must be an int >= 0 or null, got {self.kept_edits_per_rule!r}")
        for name in ("stop_after_epochs", "stop_after_steps"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or null, got {v!r}")
        for name in ("quant_consistency", "quant_consistency_tail"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.quant_simulation not in QUANT_SIMULATIONS:
            raise ValueError(f"quant_simulation must be one of {QUANT_SIMULATIONS}, got {self.quant_simulation!r}")
        if self.quant_consistency_tail and not self.quant_consistency:
            raise ValueError("quant_consistency_tail needs quant_consistency > 0 (the simulated pass it weighs)")
        if isinstance(self.empty_pairs, bool) or not isinstance(self.empty_pairs, int) or self.empty_pairs < 0:
            raise ValueError(f"empty_pairs must be an int >= 0, got {self.empty_pairs!r}")
        if isinstance(self.empty_target, bool) or not isinstance(self.empty_target, (int, float)) \
                or not -1 <= self.empty_target < 0.5:
            raise ValueError(f"empty_target must be a number in [-1, 0.5), got {self.empty_target!r}")
        for name in ("short_answer_empty_share", "short_answer_hedge_share", "short_answer_hard_share",
                     "short_answer_echo_share", "short_answer_decoy_share"):
            shortanswers.check_share(name, getattr(self, name))
        for name in ("alternate_orders", "short_answer_counterparts"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        shortanswers.check_count("short_answer_decoys_per_group", self.short_answer_decoys_per_group)
        if self.short_answer_counterparts and not self.short_answer_decoy_share:
            raise ValueError("short_answer_counterparts needs short_answer_decoy_share > 0 (the decoys they answer)")
        if self.quant_activation_bits not in ACTIVATION_BITS or isinstance(self.quant_activation_bits, bool):
            raise ValueError(f"quant_activation_bits must be one of {ACTIVATION_BITS}, "
                             f"got {self.quant_activation_bits!r}")
        if not 1 <= self.trainable_layers <= 6:
            raise ValueError(f"trainable_layers must be 1..6, got {self.trainable_layers}")

    @classmethod
    def load(cls, path: str | Path, overrides: dict | None = None) -> "Recipe":
        """The recipe in ``path``, with the fields in ``overrides`` replaced (a soup run's ``set``)."""
        data = json.loads(Path(path).read_text())
        for what, keys in (("keys", data), ("overrides", overrides or {})):
            unknown = set(keys) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"recipe {path} has unknown {what} {sorted(unknown)}")
        return cls(**{**data, **(overrides or {})})


def data_dir(explicit: str | Path | None) -> Path | None:
    """The training data folder: ``explicit`` (``--data``), else $REWARDRT_DATA, else None."""
    import os

    chosen = explicit if explicit is not None else os.environ.get(DATA_ENV) or None
    return Path(chosen) if chosen is not None else None


def resolve_data(name: str, folder: Path | None, what: str) -> Path:
    """The data file ``name`` of a recipe: absolute as it is, else inside ``folder``."""
    path = Path(name)
    if not path.is_absolute():
        if folder is None:
            raise DataError(f"training needs labelled sentence pairs ({what} {name!r}): pass --data DIR with "
                            f"{DATA_FORMAT}, or set ${DATA_ENV}; the model card names the public datasets")
        path = folder / path
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r} does not exist; --data must be a folder holding it ({DATA_FORMAT})")
    return path


def read_pairs(path: str | Path) -> list[dict]:
    """Labelled pairs, each row checked: a missing field, a non-string text, an empty reference or a
    similarity outside 0..1 fails naming the file, line and field."""
    from rewardrt.runtime.rows import read_rows

    def similarity(row: dict) -> str | None:
        sim = row.get("similarity")
        if isinstance(sim, bool) or not isinstance(sim, (int, float)) or not 0 <= sim <= 1:
            return f"field 'similarity' must be a number in 0..1, got {sim!r}"
        return None

    return read_rows(path, ("a", "b", "source"), non_empty=("a",), error=DataError, check=similarity)


def target_of(row: dict, r: Recipe) -> float:
    sim = float(row["similarity"])
    if row["source"] == "sick2014":
        label = row.get("entailment")
        if label == "CONTRADICTION":
            return min(r.contradiction_scale * sim, r.contradiction_cap)
        if label == "NEUTRAL":
            return r.neutral_scale * sim
        return sim
    if row["source"] == "msrp":
        return r.paraphrase_target if row.get("paraphrase", sim) >= 0.5 else r.non_paraphrase_target
    return sim


Example = tuple[str, str, float]


def build_examples(rows: list[dict], r: Recipe, rng: random.Random) -> list[tuple[Example, Example]]:
    """Every labelled pair, minimal edit and identity pair as its two orders (reference, response, target)."""
    out: list[tuple[Example, Example]] = []
    for row in rows:
        t = target_of(row, r)
        out.append(((row["a"], row["b"], t), (row["b"], row["a"], t)))
    sentences = sorted({row["a"] for row in rows} | {row["b"] for row in rows})
    counts = {}
    for name, (rule, changed) in EDITS.items():
        order = sentences[:]
        rng.shuffle(order)
        made = 0
        limit = r.edits_per_rule if changed or r.kept_edits_per_rule is None else r.kept_edits_per_rule
        per_change: collections.Counter = collections.Counter()
        for sentence in order:
            if made >= limit:
                break
            edited = rule(sentence, rng)
            if edited is None or edited == sentence:
                continue
            if r.max_edits_per_change is not None and name in r.spread_rules:
                key = edit_change(sentence, edited)
                if per_change[key] >= r.max_edits_per_change:
                    continue
                per_change[key] += 1
            t = r.changed_target if changed else r.kept_target
            out.append(((sentence, edited, t), (edited, sentence, t)))
            made += 1
        counts[name] = made
    for sentence in rng.sample(sentences, min(r.identity_pairs, len(sentences))):
        out.append(((sentence, sentence, r.kept_target),) * 2)
    log.info("edit pairs per rule: %s, identity pairs %d", counts, min(r.identity_pairs, len(sentences)))
    if r.empty_pairs:  # drawn only when asked: older recipes keep their data exactly
        chosen = rng.sample(sentences, min(r.empty_pairs, len(sentences)))
        empties = rng.choices(shortanswers.EMPTY_RESPONSES, k=len(chosen))
        out += [((s, e, r.empty_target),) * 2 for s, e in zip(chosen, empties)]
        log.info("empty-response pairs %d at %.2f", len(chosen), r.empty_target)
    if r.short_answer_groups:
        short = shortanswers.training_examples(r.short_answer_groups, r.seed, r.short_positive_target,
                                               r.short_negative_target, r.short_answer_kind_weights,
                                               empty_share=r.short_answer_empty_share,
                                               hedge_share=r.short_answer_hedge_share,
                                               hard_share=r.short_answer_hard_share,
                                               echo_share=r.short_answer_echo_share,
                                               decoy_share=r.short_answer_decoy_share,
                                               counterparts=r.short_answer_counterparts,
                                               decoys_per_group=r.short_answer_decoys_per_group)
        out += [(e, e) for e in short]  # the reference first in both epochs: answers are not symmetric
        log.info("short-answer examples: %d from %d groups per kind", len(short), r.short_answer_groups)
    return out


def edit_change(original: str, edited: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What an edit changed: the words taken out and put in (lower case), e.g. (('near',), ('close', 'to'))."""
    a = [w.lower() for w in WORD.findall(original)]
    b = [w.lower() for w in WORD.findall(edited)]
    out: list[str] = []
    put: list[str] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            out += a[i1:i2]
            put += b[j1:j2]
    return tuple(out), tuple(put)


_NEGATORS = frozenset({"not", "no", "never", "nobody", "nothing", "none", "n't", "nor", "without"})


def _asymmetric(a: str, b: str) -> bool:
    """True when a negation or a number appears in one text and not the other: the teacher's cosine
    is blind to exactly that, so such pairs get no teacher target."""
    def marks(t: str) -> tuple[bool, frozenset]:
        words = t.lower().replace("n't", " n't").split()
        return any(w.strip(".,;:!?") in _NEGATORS for w in words), frozenset(
            w for w in words if any(c.isdigit() for c in w))
    (na, da), (nb, db) = marks(a), marks(b)
    return na != nb or da != db


def _group(source: str) -> str:
    return "sts" if source.startswith("sts") else source


def add_teacher(pairs: list[tuple[Example, Example]], rows: list[dict], r: Recipe,
                rng: random.Random) -> list[tuple[Example, Example]]:
    """Blend the calibrated base-model cosine into the labelled targets (the first ``len(rows)`` pairs,
    contradictions excluded) and append ``teacher_pairs`` unlabelled pairs at the teacher's score."""
    from rewardrt.export.baselines import base_embedder

    sentences = sorted({row["a"] for row in rows} | {row["b"] for row in rows})
    index = {t: i for i, t in enumerate(sentences)}
    t0 = time.time()
    vectors = base_embedder(128)(sentences)
    log.info("teacher embeddings for %d sentences in %.0fs", len(sentences), time.time() - t0)
    cos = lambda a, b: float(vectors[index[a]] @ vectors[index[b]])  # noqa: E731
    by_group: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("entailment") != "CONTRADICTION":
            by_group.setdefault(_group(row["source"]), []).append(i)
    calib = {}
    for g, idx in by_group.items():  # quantile map: teacher cosine -> this source's target scale
        calib[g] = (np.sort([cos(rows[i]["a"], rows[i]["b"]) for i in idx]),
                    np.sort([pairs[i][0][2] for i in idx]))
    teach = lambda g, a, b: float(np.interp(cos(a, b), *calib[g]))  # noqa: E731
    out = list(pairs)
    w = r.teacher_weight
    for g, idx in by_group.items():
        for i in idx:
            (a, b, t), _ = pairs[i]
            if w and not _asymmetric(a, b):
                t = (1 - w) * t + w * teach(g, a, b)
                out[i] = ((a, b, t), (b, a, t))
    made = 0
    if r.teacher_pairs:
        groups = sorted(calib)
        pools = {g: sorted({rows[i][k] for i in by_group[g] for k in ("a", "b")}) for g in groups}
        pool_vectors = {g: vectors[[index[p] for p in pools[g]]] for g in groups}
        for _ in range(20 * r.teacher_pairs):  # bounded: tiny or degenerate pools give fewer pairs
            if made >= r.teacher_pairs:
                break
            g = rng.choice(groups)
            pool = pools[g]
            if len(pool) < 2:
                continue
            a = rng.choice(pool)
            if rng.random() < 0.7:  # a near neighbour: graded similarity the labels rarely cover
                sims = pool_vectors[g] @ vectors[index[a]]
                top = torch.topk(sims, min(12, len(pool))).indices.tolist()
                b = pool[rng.choice(top[1:])]
            else:
                b = rng.choice(pool)
            if a == b or _asymmetric(a, b):
                continue
            t = teach(g, a, b)
            out.append(((a, b, t), (b, a, t)))
            made += 1
    log.info("teacher: weight %.2f on labelled pairs, %d extra pairs", w, made)
    return out


def add_hard_contradictions(pairs: list[tuple[Example, Example]], rows: list[dict],
                            r: Recipe) -> list[tuple[Example, Example]]:
    """Repeat the labelled high-overlap contradictions (the first ``len(rows)`` pairs hold the
    labelled rows in order) ``hard_contradiction_repeats`` extra times, with their final targets."""
    hard = [pairs[i] for i, row in enumerate(rows) if is_confound_pair(row)]
    log.info("hard contradictions: %d pairs, %d extra copies each", len(hard), r.hard_contradiction_repeats)
    return list(pairs) + hard * r.hard_contradiction_repeats


def epoch_examples(pairs: list[tuple[Example, Example]], epoch: int, r: Recipe) -> list[Example]:
    """Both orders of every pair, or with ``alternate_orders`` one order, flipped every epoch."""
    if not r.alternate_orders:
        return [e for pair in pairs for e in pair]
    return [pair[(i + epoch) % 2] for i, pair in enumerate(pairs)]


def batches(examples, tokenizer, r: Recipe, rng: random.Random):
    """Shuffled batches of similar length (less padding, same examples per epoch)."""
    order = list(range(len(examples)))
    rng.shuffle(order)
    chunk = r.batch_size * 50
    groups = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(examples[i][0]) + len(examples[i][1]))
        groups.extend(part[i : i + r.batch_size] for i in range(0, len(part), r.batch_size))
    rng.shuffle(groups)
    for idx in groups:
        enc = encode_pairs(tokenizer, [examples[i][0] for i in idx], [examples[i][1] for i in idx], r.max_length)
        target = torch.tensor([examples[i][2] for i in idx], dtype=torch.float32)
        yield enc["input_ids"], enc["attention_mask"], target


@torch.inference_mode()
def predict(net: RewardNet, tokenizer, refs: list[str], resps: list[str], batch: int = 64) -> np.ndarray:
    net.eval()
    out = []
    order = sorted(range(len(refs)), key=lambda i: len(refs[i]) + len(resps[i]))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        enc = encode_pairs(tokenizer, [refs[i] for i in idx], [resps[i] for i in idx], 512)
        score, _ = net(enc["input_ids"], enc["attention_mask"])
        out.extend(zip(idx, score.tolist()))
    res = np.zeros(len(refs))
    for i, v in out:
        res[i] = v
    return res


def short_dev_groups(r: Recipe) -> list[shortanswers.Group]:
    """Held-out short-answer groups for selection: the TRAIN templates with another seed (the
    PROBE templates stay unseen until ``rewardrt eval``)."""
    if not r.short_answer_dev_groups:
        return []
    return shortanswers.groups(shortanswers.TRAIN, r.short_answer_dev_groups, r.seed + 7919,
                               kinds=shortanswers.training_kinds(r.short_answer_kind_weights),
                               hedge_share=1.0 if r.short_answer_hedge_share else 0.0,
                               decoy_share=1.0 if r.short_answer_decoy_share else 0.0)


def dev_metrics(net: RewardNet, tokenizer, dev: list[dict], synonym_control: bool = False,
                short: list[shortanswers.Group] | None = None) -> dict[str, float]:
    """The selection metrics on the dev pairs (the full table is ``rewardrt eval``); with
    ``synonym_control`` also the share of ``rewardrt eval``'s synonym probes the model notices; with
    ``short`` groups their order accuracy, threshold shares and exact-match mean, the first added to
    the selection score."""
    scores = predict(net, tokenizer, [d["a"] for d in dev], [d["b"] for d in dev])
    gold = np.array([d["similarity"] for d in dev])
    src = np.array([d["source"] for d in dev])
    m = {}
    for s in sorted(set(src)):
        m[f"spearman/{s}"] = spearman(scores[src == s], gold[src == s])
    msrp = src == "msrp"
    m["auc/msrp"] = roc_auc(scores[msrp], gold[msrp] >= 0.5)
    ent = np.array([d.get("entailment") for d in dev])
    sel = (ent == "ENTAILMENT") | (ent == "CONTRADICTION")
    m["auc/sick-entail-vs-contra"] = roc_auc(scores[sel], ent[sel] == "ENTAILMENT")
    contra = ent == "CONTRADICTION"
    m["contradiction>0.7"] = float(np.mean(scores[contra] > 0.7))
    m["confound"] = confound_rate(dev, scores) or 0.0
    m["selection"] = float(np.mean([v for k, v in m.items() if k.startswith(("spearman", "auc"))])
                           - m["contradiction>0.7"])
    if short:
        table = shortanswers.evaluate_groups(
            short, lambda a, b: predict(net, tokenizer, list(a), list(b)).tolist())
        m.update({f"short/{k}": table["all"][k] for k in shortanswers.METRICS})
        m["short/worst-kind-pairwise"] = min(v["pairwise"] for k, v in table.items() if k != "all")
        m["selection"] += m["short/pairwise"]
    if synonym_control:
        probes = swap_probes(dev)["synonym"]
        originals, edited = [a for a, _ in probes], [b for _, b in probes]
        drops = predict(net, tokenizer, originals, originals) - predict(net, tokenizer, originals, edited)
        m["synonym_noticed"] = float(np.mean(drops > NOTICED_DROP)) if probes else 0.0
    return m


def prefer(new: dict[str, float], best: dict[str, float] | None, max_confound: float,
           max_synonym_noticed: float | None = None) -> bool:
    """Whether dev metrics ``new`` beat ``best``: within the confound limit before out of it, then
    (when given) within the synonym-control limit before out of it, then by the selection score."""
    if best is None:
        return True
    rank = lambda m: (m["confound"] <= max_confound,  # noqa: E731
                      max_synonym_noticed is None or m["synonym_noticed"] <= max_synonym_noticed,
                      m["selection"])
    return rank(new) > rank(best)


def release_weights(net: RewardNet, precision: str) -> dict[str, torch.Tensor]:
    """The encoder tensors as released: trained ones rounded to ``precision``, frozen ones untouched."""
    trained = {n for n, p in net.encoder.named_parameters() if p.requires_grad}
    out = {}
    for k, v in net.encoder.state_dict().items():
        v = v.detach()
        if k in trained and precision == "float16":
            v = v.to(torch.float16).to(v.dtype)
        out[k] = v
    return out


def save_checkpoint(net: RewardNet, base: Path, out: Path, precision: str = "float32") -> None:
    write_checkpoint(release_weights(net, precision),
                     {k: v.detach().clone() for k, v in net.head.state_dict().items()}, out, base)


def _start_from(checkpoint: Path) -> RewardNet:
    """The encoder and head of ``checkpoint``, whose config and tokenizer must be the pinned base's
    (the shipped delta is stored over that base)."""
    from rewardrt.export.checkpoint import CheckpointError, load_head_state, locate
    from rewardrt.export.reference import load_encoder

    files = locate(checkpoint)
    for name, _, _ in unpinned(files.root, ("config.json", "vocab.txt", "tokenizer.json")):
        raise CheckpointError(f"init_from {str(checkpoint)!r}: its {name} is not the pinned base's; "
                              "a run can only continue a checkpoint of the same base model")
    encoder = load_encoder(files.root)
    head = make_head(encoder.config.hidden_size)
    head.load_state_dict(load_head_state(files, encoder.config.hidden_size))
    log.info("starting from %s", checkpoint)
    return RewardNet(encoder, head)


def _with_int8_gap(net: RewardNet, ids: torch.Tensor, mask: torch.Tensor, bits: int,
                   noise: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw head output of the batch, and per pair the squared gap between its clamped score and
    the score with the encoder on simulated INT8 (the same dropout masks: both passes start from one
    random state). ``noise``: the simulation draws code noise instead of rounding
    (:func:`simulated_int8`)."""
    seed = int(torch.randint(0, 2**62, ()).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        score, raw = net(ids, mask)
    with torch.random.fork_rng(devices=[]), simulated_int8(net.encoder, bits, seed + 1 if noise else None):
        torch.manual_seed(seed)
        score_q, _ = net(ids, mask)
    return raw, ((score_q - score) ** 2).flatten()


def int8_gap_loss(squared: torch.Tensor, weight: float, tail_weight: float = 0.0) -> torch.Tensor:
    """``weight`` x the mean squared gap, plus ``tail_weight`` x the mean of the TAIL_GAPS largest."""
    loss = weight * squared.mean()
    if tail_weight:
        loss = loss + tail_weight * squared.topk(min(TAIL_GAPS, squared.numel())).values.mean()
    return loss


def train(recipe_path: str | Path, out_dir: str | Path, overrides: dict | None = None,
          data: str | Path | None = None) -> dict:
    """Train the recipe into ``out_dir``; relative data files are read from ``data`` (else
    $REWARDRT_DATA)."""
    from transformers import AutoModel, AutoTokenizer

    r = Recipe.load(recipe_path, overrides)
    folder = data_dir(data)
    train_rows = read_pairs(resolve_data(r.train_data, folder, "train_data"))
    dev_rows = read_pairs(resolve_data(r.dev_data, folder, "dev_data"))
    recipe_dir = Path(recipe_path).resolve().parent
    resolve = lambda p: (recipe_dir / p).resolve() if not Path(p).is_absolute() else Path(p)  # noqa: E731
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(r.seed)
    np.random.seed(r.seed)
    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    rng = random.Random(r.seed)

    base = base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    if r.init_from:
        net = _start_from(resolve(r.init_from))
        encoder = net.encoder
    else:
        encoder = AutoModel.from_pretrained(str(base), local_files_only=True, attn_implementation="eager")
        net = RewardNet(encoder, make_head(encoder.config.hidden_size))
    n_layers = encoder.config.num_hidden_layers
    first_trainable = n_layers - r.trainable_layers
    for name, p in net.encoder.named_parameters():
        p.requires_grad = name.startswith("encoder.layer.") and int(name.split(".")[2]) >= first_trainable

    short_dev = short_dev_groups(r)
    pairs = build_examples(train_rows, r, rng)
    if r.teacher_weight or r.teacher_pairs:
        pairs = add_teacher(pairs, train_rows, r, rng)
    if r.hard_contradiction_repeats:
        pairs = add_hard_contradictions(pairs, train_rows, r)
    steps_per_epoch = math.ceil(len(epoch_examples(pairs, 0, r)) / r.batch_size)
    total = steps_per_epoch * r.epochs
    warmup = max(1, int(total * r.warmup_fraction))
    enc_params = [p for p in net.encoder.parameters() if p.requires_grad]
    groups = {}
    for name, p in net.encoder.named_parameters():
        if p.requires_grad:
            layer = int(name.split(".")[2])
            groups.setdefault(layer, []).append(p)
    opt = torch.optim.AdamW(
        [{"params": ps, "lr": r.lr_encoder * r.layer_lr_decay ** (n_layers - 1 - layer)}
         for layer, ps in sorted(groups.items())]
        + [{"params": net.head.parameters(), "lr": r.lr_head}],
        weight_decay=r.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then linear decay to 0
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / (total - warmup))
    )
    log.info("examples/epoch %d, steps/epoch %d, trainable encoder params %d",
             len(epoch_examples(pairs, 0, r)), steps_per_epoch, sum(p.numel() for p in enc_params))

    history = []
    best = None
    t0 = time.time()
    step = 0

    def select(epoch: int) -> None:
        """Dev metrics of the weights as they would be released; keep the best checkpoint."""
        nonlocal best
        live = None
        if r.release_precision != "float32":
            live = {k: v.clone() for k, v in net.encoder.state_dict().items()}
            net.encoder.load_state_dict(release_weights(net, r.release_precision))
        metrics = dev_metrics(net, tokenizer, dev_rows, r.max_dev_synonym_noticed is not None, short_dev)
        metrics.update(epoch=epoch, step=step, elapsed_s=round(time.time() - t0, 1))
        history.append(metrics)
        log.info("dev at epoch %d step %d: %s", epoch, step, json.dumps(metrics))
        if prefer(metrics, best, r.max_dev_confound, r.max_dev_synonym_noticed):
            best = metrics
            save_checkpoint(net, base, out_dir / "checkpoint", r.release_precision)
        if live is not None:
            net.encoder.load_state_dict(live)  # keep training the unrounded weights
        net.train()

    for epoch in range(r.stop_after_epochs or r.epochs):
        net.train()
        running = running_gap = 0.0
        examples = epoch_examples(pairs, epoch, r)
        for i, (ids, mask, target) in enumerate(batches(examples, tokenizer, r, rng)):
            if r.quant_consistency:
                raw, squared = _with_int8_gap(net, ids, mask, r.quant_activation_bits,
                                              r.quant_simulation == "noise")
                loss = torch.nn.functional.mse_loss(raw, target) + int8_gap_loss(
                    squared, r.quant_consistency, r.quant_consistency_tail)
                running_gap += squared.mean().item()
            else:
                _, raw = net(ids, mask)
                loss = torch.nn.functional.mse_loss(raw, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            step += 1
            running += loss.item()
            if (i + 1) % 100 == 0:
                log.info("epoch %d step %d/%d loss %.4f%s elapsed %.0fs", epoch + 1, i + 1, steps_per_epoch,
                         running / 100, f" int8 gap {running_gap / 100:.2e}" if r.quant_consistency else "",
                         time.time() - t0)
                running = running_gap = 0.0
            if step == r.stop_after_steps:
                break
            if r.eval_every_steps and step % r.eval_every_steps == 0 and 0 < i < steps_per_epoch - 1:
                select(epoch + 1)
        select(epoch + 1)
        if step == r.stop_after_steps:
            break
    summary = {"recipe": asdict(r), "history": history, "selected_epoch": best["epoch"], "selected_step": best["step"],
               "wall_time_s": round(time.time() - t0, 1), "threads": r.threads,
               "torch": torch.__version__}
    (out_dir / "train_log.json").write_text(json.dumps(summary, indent=2))
    return summary
