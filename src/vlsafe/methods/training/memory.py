"""The memory-lean answer-only loss and the process's peak RSS.

A stock ``model(**batch, labels=labels)`` materialises float32 logits over the whole vocabulary (49k for
SmolLM2) at every position of the padded batch, plus their upcast copy, log-softmax and gradient: several
``B x T x V x 4`` byte tensors alive at once. Supervised fine-tuning only scores the reply tokens (a few
percent of the positions), so :func:`answer_only_loss` runs the decoder, gathers the hidden states of the
supervised positions and applies ``lm_head`` + cross-entropy to those rows only, chunk by chunk. A loss
function built on it runs in :class:`vlsafe.methods.training.Trainer` like any other.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vlsafe.core.errors import InputError
from vlsafe.models.structure import decoder_and_head

IGNORE_INDEX = -100


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _chunk_ce(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def answer_only_loss(
    model: Any, batch: Mapping[str, torch.Tensor], labels: torch.Tensor, chunk_size: int = 256
) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised positions only.

    Equivalent to the loss of ``model(**batch, labels=labels)`` (same shift, same ``-100`` convention),
    but ``lm_head`` runs on the supervised rows only, ``chunk_size`` rows at a time, each chunk under
    activation checkpointing so that at most one chunk's logits are alive.

    Args:
        model: A causal LM or LLaVA-style VLM (optionally PEFT-wrapped) with ``.model`` (returning
            ``last_hidden_state``) and output embeddings.
        batch: Model inputs (``input_ids``, ``attention_mask``, optionally ``pixel_values``...).
        labels: ``[B, T]`` target ids, ``-100`` where not supervised.
        chunk_size: Rows of hidden states per ``lm_head`` call.

    Returns:
        A scalar loss tensor (with gradient when the model has trainable parameters).
    """
    decoder, head = decoder_and_head(model)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    if labels.shape != hidden.shape[:2]:
        raise InputError(
            f"labels shape {tuple(labels.shape)} does not match the sequence shape {tuple(hidden.shape[:2])}"
        )
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        raise InputError("no supervised position in the batch (all labels are -100)")
    rows = hidden[:, :-1][keep]
    tgt = targets[keep].to(rows.device)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk_size):
        h, t = rows[start : start + chunk_size], tgt[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_chunk_ce, head, h, t, use_reentrant=False)
        else:
            total = total + _chunk_ce(head, h, t)
    return total / count
