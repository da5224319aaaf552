"""The inputs every engine scores, built once from the real dev pairs and sent to every worker.

* latency: one pair per call whose ``reference [SEP] response`` is exactly N tokens long;
* latency-dev: one dev pair per call, pairs of ``ORDINARY_TOKENS`` (ordinary answers, the length
  range the batch-1 target is stated for), each at its own length;
* throughput: dev pairs, scored in calls of the caller's batch size;
* rl: a GRPO-like stream: short references, groups of 8 responses sharing one, response lengths
  from one sentence to ~500 tokens (log-uniform), samples shuffled within each step;
* fidelity: dev pairs scored by every engine and compared with the reference;
* swap: one-word-swap probes (s, s) and (s, edit(s)) on dev sentences.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rewardrt.bench.config import GROUP_SIZE, BenchPlan, throughput_pairs

RL_MAX_RESPONSE_TOKENS = 500
ORDINARY_TOKENS = (20, 80)   # batch-1 latency on dev pairs of this many tokens (both ends included)
LATENCY_DEV = "latency-dev"
MAX_REFERENCE_TOKENS = 20


def read_dev(pairs: str | Path | None = None) -> list[dict]:
    """The bench's pairs as rows ``{"a": reference, "b": response}``: the held-out (gate) part of
    ``pairs`` (a JSONL file of reference/response rows; None: the bundled pair set), which no
    export calibrated on."""
    from rewardrt.export.pairs import load_pair_set

    return [{"a": r["reference"], "b": r["response"]} for r in load_pair_set(pairs).gate]


class TokenCounter:
    """Token counts as the engines see them (special tokens included, no truncation)."""

    def __init__(self, tokenizer_json: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(tokenizer_json))
        self.tok.no_padding()
        self.tok.no_truncation()

    def pair(self, reference: str, response: str) -> int:
        from rewardrt.runtime.tokenizer import format_pair

        return len(self.tok.encode(format_pair(reference, response)).ids)

    def text(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)


@dataclass
class Workloads:
    sets: dict[str, dict] = field(default_factory=dict)   # name -> {"refs","resps"} or {"steps"}
    info: dict[str, dict] = field(default_factory=dict)   # name -> what the set holds, for the report

    def latency_set(self, length: int) -> str:
        return f"latency-{length}"


def _exact_length_pair(counter: TokenCounter, reference: str, words: Sequence[str], length: int) -> str | None:
    """A response made of a prefix of ``words`` padded with one-token words so the pair has exactly
    ``length`` tokens; None if the reference alone is too long."""
    def count(k: int) -> int:
        return counter.pair(reference, " ".join(words[:k]))

    if count(1) > length:
        return None
    lo, hi = 1, len(words)
    while lo < hi:  # the largest prefix that fits
        mid = (lo + hi + 1) // 2
        if count(mid) <= length:
            lo = mid
        else:
            hi = mid - 1
    response = " ".join(words[:lo])
    missing = length - counter.pair(reference, response)
    response = response + " a" * missing
    return response if counter.pair(reference, response) == length else None


def _short_references(rows: Sequence[dict], counter: TokenCounter) -> list[str]:
    refs = sorted({r["a"] for r in rows if counter.text(r["a"]) <= MAX_REFERENCE_TOKENS})
    if not refs:
        raise ValueError(f"the dev pairs hold no reference of at most {MAX_REFERENCE_TOKENS} tokens")
    return refs


def build(rows: Sequence[dict], counter: TokenCounter, plan: BenchPlan, seed: int = 0) -> Workloads:
    rng = random.Random(seed)
    w = Workloads()
    refs = _short_references(rows, counter)
    sentences = [r["b"] for r in rows]

    # batch-1 latency at exact lengths
    for length in plan.lengths:
        pairs: list[tuple[str, str]] = []
        while len(pairs) < plan.latency_calls:
            words: list[str] = []
            while len(words) < length:
                words += rng.choice(sentences).split()
            ref = rng.choice(refs)
            resp = _exact_length_pair(counter, ref, words, length)
            if resp is not None:
                pairs.append((ref, resp))
        w.sets[w.latency_set(length)] = {"refs": [a for a, _ in pairs], "resps": [b for _, b in pairs]}
        w.info[w.latency_set(length)] = {"pairs": len(pairs), "tokens": length}

    # batch-1 latency on ordinary dev pairs, at their own lengths
    ordinary = [r for r in rows if ORDINARY_TOKENS[0] <= counter.pair(r["a"], r["b"]) <= ORDINARY_TOKENS[1]]
    if not ordinary:
        raise ValueError(f"the dev pairs hold no pair of {ORDINARY_TOKENS[0]}-{ORDINARY_TOKENS[1]} tokens "
                         "for the batch-1 latency set")
    picked = rng.sample(ordinary, min(len(ordinary), plan.latency_dev_calls))
    tokens = sorted(counter.pair(r["a"], r["b"]) for r in picked)
    w.sets[LATENCY_DEV] = {"refs": [r["a"] for r in picked], "resps": [r["b"] for r in picked]}
    w.info[LATENCY_DEV] = {"pairs": len(picked), "token_window": list(ORDINARY_TOKENS),
                           "tokens_min": tokens[0], "tokens_median": tokens[len(tokens) // 2],
                           "tokens_max": tokens[-1], "tokens_mean": sum(tokens) / len(tokens)}

    # throughput on dev pairs: batch size b scores the first throughput_pairs(plan, b) of them
    per_batch = {b: throughput_pairs(plan, b) for b in plan.batches}
    sample = rng.sample(list(rows), min(max(per_batch.values()), len(rows)))
    w.sets["pairs"] = {"refs": [r["a"] for r in sample], "resps": [r["b"] for r in sample]}
    lengths = [counter.pair(r["a"], r["b"]) for r in sample]
    w.info["pairs"] = {"pairs": len(sample), "pairs_per_batch_size": {str(b): n for b, n in per_batch.items()},
                       "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths)}

    # mixed-length RL steps
    steps, resp_tokens = [], []
    for _ in range(plan.rl_steps):
        samples = []
        for _ in range(plan.rl_groups):
            ref = rng.choice(refs)
            for _ in range(GROUP_SIZE):
                first = rng.choice(sentences)
                low = max(1, counter.text(first))
                target = math.exp(rng.uniform(math.log(low), math.log(RL_MAX_RESPONSE_TOKENS)))
                parts, n = [first], low
                while n < target:
                    s = rng.choice(sentences)
                    parts.append(s)
                    n += counter.text(s)
                samples.append((ref, " ".join(parts)))
                resp_tokens.append(n)
        rng.shuffle(samples)
        steps.append({"refs": [a for a, _ in samples], "resps": [b for _, b in samples]})
    w.sets["rl"] = {"steps": steps}
    resp_tokens.sort()
    w.info["rl"] = {"steps": len(steps), "groups_per_step": plan.rl_groups, "group_size": GROUP_SIZE,
                    "pairs": len(resp_tokens), "response_tokens_min": resp_tokens[0],
                    "response_tokens_median": resp_tokens[len(resp_tokens) // 2],
                    "response_tokens_max": resp_tokens[-1],
                    "response_tokens_mean": sum(resp_tokens) / len(resp_tokens)}

    # fidelity on dev pairs (a fixed sample, independent of the speed sets)
    frng = random.Random(seed + 1)
    fid = list(rows) if plan.fidelity_pairs is None or plan.fidelity_pairs >= len(rows) \
        else frng.sample(list(rows), plan.fidelity_pairs)
    w.sets["fidelity"] = {"refs": [r["a"] for r in fid], "resps": [r["b"] for r in fid]}
    w.info["fidelity"] = {"pairs": len(fid)}

    # one-word swaps: the pairs (s, s) then (s, edit(s)), per probe
    from rewardrt.models.evaluate import swap_probes

    probes = swap_probes(rows, per_rule=plan.swap_per_rule)
    originals = [a for pairs in probes.values() for a, _ in pairs]
    edited = [b for pairs in probes.values() for _, b in pairs]
    w.sets["swap"] = {"refs": originals + originals, "resps": originals + edited}
    w.info["swap"] = {"probes": {name: len(pairs) for name, pairs in probes.items()}}
    return w
