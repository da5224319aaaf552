"""The torch reference: neural-txt's scoring, reproduced exactly. It is the oracle for export
verification, the tests and the bench.

Scoring path (as ``neuraltxt.NeuralTxtReward``): the text ``f"{reference} [SEP] {response}"`` is
tokenized as ONE sequence (truncation at ``max_length`` by the runtime's rule, ``truncation``:
the reference and the end of the response kept by default, or neural-txt's cut of the text's end
with ``"keep_start"``; padding to the longest in the batch), run
through the encoder, pooled by masked mean and masked max (concatenated, ``2 * hidden``), fed to
``Sequential(Dropout(0.2), Linear(2 * hidden, 1))`` and clamped to [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from rewardrt.export.checkpoint import load_head_state, locate, read_config
from rewardrt.export.errors import CheckpointError
from rewardrt.runtime.api import RankedResponse, normalize_references
from rewardrt.runtime.tokenizer import DEFAULT_TRUNCATION, check_truncation, fit_pairs, format_pair

DEFAULT_MAX_LENGTH = 512


def meanmax_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean and masked max over the sequence axis, concatenated."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    # the masked sum as a batched [1, L] x [L, H] product per row: exported, it runs the same kernel
    # whatever the batch size (a ReduceSum over L takes another path for a batch of one row, which
    # moved the last bit of a score); the same value as (hidden * m).sum(1) up to float rounding
    summed = torch.matmul(m.transpose(1, 2), hidden).squeeze(1)
    mean = summed / m.sum(1).clamp(min=1e-9)
    mx = hidden.masked_fill(m == 0, float("-inf")).max(1).values
    return torch.cat([mean, mx], dim=-1)


class RewardNet(nn.Module):
    """Encoder + mean⊕max pooling + head. ``forward`` returns ``(score, raw)``: the clamped score
    and the head's raw output, so parity can be checked where the clamp would hide a difference."""

    def __init__(self, encoder: nn.Module, head: nn.Sequential) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),
        ).last_hidden_state
        raw = self.head(meanmax_pool(hidden, attention_mask)).squeeze(-1)
        return raw.clamp(0.0, 1.0), raw


def make_head(hidden_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(2 * hidden_size, 1))


def load_encoder(checkpoint_dir: str | Path, attn_implementation: str | None = "eager") -> nn.Module:
    """The checkpoint's encoder in eval mode, loaded locally with no remote code.

    ``attn_implementation``: "eager" (default) writes attention out as matmul/softmax, the form the
    ONNX export traces and onnxruntime fuses; None keeps transformers' default (SDPA), which is how
    upstream ``NeuralTxtReward`` loads it and so what the bench times as the torch reference (the
    same scores to float rounding; on RL-shaped batches SDPA is much faster on CPU)."""
    from transformers import AutoModel

    files = locate(checkpoint_dir, require_head=False)
    read_config(files)
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        encoder = AutoModel.from_pretrained(
            str(files.root), local_files_only=True, trust_remote_code=False, **attn,
        )
    except Exception as exc:
        raise CheckpointError(
            f"cannot load encoder weights from {str(files.weights)!r}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return encoder.eval()


def load_tokenizer(checkpoint_dir: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(checkpoint_dir), local_files_only=True, trust_remote_code=False
    )


def encode_pairs(tokenizer, references: Sequence[str], responses: Sequence[str], max_length: int,
                 truncation: str = DEFAULT_TRUNCATION) -> dict[str, torch.Tensor]:
    """transformers' ids of the pairs' texts, truncated by the runtime's rule (``fit_pairs``) and
    padded to the longest: ``input_ids`` and ``attention_mask``."""
    texts = [format_pair(a, b) for a, b in zip(references, responses)]
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    fit_pairs(ids, references, responses,
              lambda t: tokenizer(t, add_special_tokens=False, truncation=False, verbose=False)["input_ids"],
              max_length, tokenizer.sep_token_id, truncation)
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class TorchReward:
    """neural-txt's ``NeuralTxtReward`` on a local checkpoint, CPU, fp32, no network
    (``attn_implementation``: see :func:`load_encoder`)."""

    def __init__(self, checkpoint_dir: str | Path, max_length: int = DEFAULT_MAX_LENGTH,
                 attn_implementation: str | None = "eager", truncation: str = DEFAULT_TRUNCATION) -> None:
        files = locate(checkpoint_dir)
        config = read_config(files)
        self.checkpoint = files
        self.config = config
        self.max_length = max_length
        self.truncation = check_truncation(truncation)
        self.tokenizer = load_tokenizer(files.root)
        head = make_head(config["hidden_size"])
        head.load_state_dict(load_head_state(files, config["hidden_size"]))
        self.net = RewardNet(load_encoder(files.root, attn_implementation), head).eval()

    def encode(self, references: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        return encode_pairs(self.tokenizer, references, responses, self.max_length, self.truncation)

    @torch.inference_mode()
    def forward_pairs(self, references: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encode(references, responses)
        return self.net(enc["input_ids"], enc["attention_mask"])

    def raw_scores(
        self, responses: Sequence[str], reference: str | Sequence[str], batch_size: int = 64
    ) -> list[float]:
        """Pre-clamp head outputs, batched exactly like ``batch_score``."""
        return self._run(responses, reference, batch_size, raw=True)

    def score(self, response: str, reference: str) -> float:
        return self.batch_score([response], reference)[0]

    def batch_score(
        self, responses: Sequence[str], reference: str | Sequence[str], batch_size: int = 64
    ) -> list[float]:
        return self._run(responses, reference, batch_size, raw=False)

    def rank(self, responses: Sequence[str], reference: str | Sequence[str]) -> list[RankedResponse]:
        scores = self.batch_score(responses, reference)
        ranked = [RankedResponse(i, r, s) for i, (r, s) in enumerate(zip(responses, scores))]
        return sorted(ranked, key=lambda item: item.score, reverse=True)

    def _run(self, responses, reference, batch_size: int, raw: bool) -> list[float]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        references = normalize_references(responses, reference)
        responses = list(responses)
        out: list[float] = []
        for start in range(0, len(references), batch_size):
            score, raw_out = self.forward_pairs(references[start : start + batch_size],
                                                responses[start : start + batch_size])
            out.extend(float(v) for v in (raw_out if raw else score).tolist())
        return out
