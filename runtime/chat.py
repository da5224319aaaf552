"""Chat-template special tokens in decoded text: the one list and the one way to remove them.

Trainers that decode with special tokens kept (OpenRLHF) hand over responses ending in ``<|im_end|>``,
``<|eot_id|>``, ``</s>``...; scored as text they would move the reward. Every path that takes a
trainer's text (the RL adapters in ``integrations/rl.py``, ``rewardrt serve``'s ``/get_reward``)
strips them with :func:`strip_chat_tokens` before tokenizing. A reference is never touched.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import lru_cache

ENV_STRIP_TOKENS = "REWARDRT_STRIP_TOKENS"

# The special tokens chat templates leave in decoded text, by template family. A response keeps its
# words; only these exact strings are removed (a reference is never touched).
CHAT_TOKENS: tuple[str, ...] = (
    # ChatML (Qwen, Yi, OpenHermes, ...) and GPT-2-style end of text / padding
    "<|im_start|>", "<|im_end|>", "<|im_sep|>", "<|endoftext|>", "<|pad|>",
    # Llama 3
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|eom_id|>", "<|finetune_right_pad_id|>",
    # Llama 2 / Mistral / SentencePiece
    "<s>", "</s>", "[INST]", "[/INST]", "<unk>", "<pad>",
    # Gemma
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
    # Phi-3 / Phi-4 and the harmony format (gpt-oss)
    "<|end|>", "<|user|>", "<|assistant|>", "<|system|>", "<|start|>", "<|message|>", "<|channel|>",
    "<|return|>", "<|call|>",
    # DeepSeek (full-width bars)
    "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "<\uff5cUser\uff5c>", "<\uff5cAssistant\uff5c>",
)
StripTokens = Sequence[str] | None


def check_strip_tokens(tokens: StripTokens, name: str = "strip_tokens") -> tuple[str, ...]:
    """``tokens`` as a tuple of non-empty strings (None: the empty tuple, nothing stripped)."""
    if tokens is None:
        return ()
    if isinstance(tokens, str) or not isinstance(tokens, Sequence):
        raise TypeError(f"{name} must be a list of str or None, got {type(tokens).__name__}")
    for i, token in enumerate(tokens):
        if not isinstance(token, str) or not token:
            raise ValueError(f"{name}[{i}] must be a non-empty str, got {token!r}")
    return tuple(tokens)


def parse_strip_tokens(spec: str, name: str = ENV_STRIP_TOKENS) -> tuple[str, ...]:
    """The tokens a ``--strip-tokens`` / ``$REWARDRT_STRIP_TOKENS`` value names: comma-separated
    tokens, where the word ``default`` stands for :data:`CHAT_TOKENS`; ``none`` (or nothing) strips
    nothing. E.g. ``default,<|my_end|>``."""
    if not isinstance(spec, str):
        raise TypeError(f"{name} must be a str, got {type(spec).__name__}")
    words = [w.strip() for w in spec.split(",")]
    if [w.lower() for w in words] in (["none"], [""]):
        return ()
    where = f"{name}: " if name else ""
    out: list[str] = []
    for word in words:
        if not word:
            raise ValueError(f"{where}empty item in {spec!r}; separate tokens with single commas")
        if word.lower() == "none":
            raise ValueError(f"{where}'none' cannot be combined with tokens in {spec!r}")
        out.extend(CHAT_TOKENS if word.lower() == "default" else (word,))
    return tuple(dict.fromkeys(out))


def env_strip_tokens() -> tuple[str, ...]:
    """What ``$REWARDRT_STRIP_TOKENS`` names (unset: :data:`CHAT_TOKENS`)."""
    spec = os.environ.get(ENV_STRIP_TOKENS)
    return CHAT_TOKENS if spec is None else parse_strip_tokens(spec)


@lru_cache(maxsize=32)
def _token_pattern(tokens: tuple[str, ...]) -> re.Pattern[str]:
    # longest first, so "<|end|>" never eats the start of a longer token sharing its prefix
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


def strip_chat_tokens(text: str, tokens: StripTokens = CHAT_TOKENS) -> str:
    """``text`` without any occurrence of ``tokens`` (chat-template special tokens); None or an
    empty list returns it unchanged."""
    tokens = check_strip_tokens(tokens)
    return _token_pattern(tokens).sub("", text) if tokens else text


def strip_prompt(query: str, prompt: str | None, tokens: StripTokens = ()) -> str:
    """The response inside an OpenRLHF ``query`` (the prompt followed by the generated response),
    without ``tokens``.

    Rule: ``tokens`` are removed from both; then, if the query starts with the prompt (leading
    whitespace aside: left padding decodes to pad tokens), the response is the rest of the query;
    otherwise (no prompt, or a prompt that the trainer's decode did not reproduce exactly) it is the
    whole query.
    """
    query = strip_chat_tokens(query, tokens)
    if prompt:
        prompt = strip_chat_tokens(prompt, tokens).lstrip()
        rest = query.lstrip()
        if prompt and rest.startswith(prompt):
            return rest[len(prompt):]
    return query
