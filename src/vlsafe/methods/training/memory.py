"""Memory-lean training steps for the organism (CPU, 24 GB machines).

A stock ``model(**batch, labels=labels)`` materialises float32 logits over the whole vocabulary (49k for
SmolLM2) at every position of the padded batch, plus their upcast copy, log-softmax and gradient: several
``B x T x V x 4`` byte tensors alive at once. Supervised fine-tuning only scores the reply tokens (a few
percent of the positions), so :func:`answer_only_loss` runs the decoder, gathers the hidden states of the
supervised positions and applies ``lm_head`` + cross-entropy to those rows only, chunk by chunk.
:func:`trim_padding` removes all-padding columns so that ``T`` is the longest real sequence of the batch.
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


def trim_padding(batch: Mapping[str, torch.Tensor], pad_side: str | None = None) -> dict[str, torch.Tensor]:
    """Drop sequence columns that are padding in every row (``attention_mask == 0`` everywhere).

    Args:
        batch: Holds ``attention_mask`` ``[B, T]`` and any other ``[B, T]`` tensors (``input_ids``,
            ``labels``); tensors of another shape (``pixel_values``) pass through unchanged.
        pad_side: ``"left"`` / ``"right"``; inferred from the mask when ``None``.

    Returns:
        A new dict with the padding-only columns removed.
    """
    mask = batch.get("attention_mask")
    if mask is None:
        return dict(batch)
    if mask.dim() != 2:
        raise InputError(f"attention_mask must be [batch, seq]; got shape {tuple(mask.shape)}")
    used = mask.bool().any(dim=0)
    if used.all():
        return dict(batch)
    idx = used.nonzero().squeeze(1)
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    if pad_side == "left":
        hi = mask.shape[1]
    elif pad_side == "right":
        lo = 0
    shape = mask.shape
    return {k: (v[:, lo:hi] if torch.is_tensor(v) and v.shape[:2] == shape else v) for k, v in batch.items()}


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


def freeze_embeddings(model: Any) -> int:
    """Turn off gradients of the input and output embeddings; returns the number of frozen parameters."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    frozen = 0
    seen: set[int] = set()
    for module in (base.get_input_embeddings(), base.get_output_embeddings()):
        if module is None:
            continue
        for p in module.parameters():
            if id(p) not in seen and p.requires_grad:
                p.requires_grad_(False)
                frozen += p.numel()
            seen.add(id(p))
    return frozen


def train_step(
    model: Any,
    batch: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None = 1.0,
    chunk_size: int = 256,
) -> float:
    """One optimiser step on :func:`answer_only_loss` after :func:`trim_padding`; returns the loss value.

    ``batch`` must hold ``labels``; everything else is passed to the model.
    """
    if "labels" not in batch:
        raise InputError("train_step needs a batch with `labels` (-100 where not supervised)")
    trimmed = trim_padding(batch)
    labels = trimmed.pop("labels")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = answer_only_loss(model, trimmed, labels, chunk_size=chunk_size)
    loss.backward()
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    return float(loss.detach())


def prepare_for_training(
    model: Any, gradient_checkpointing: bool = True, frozen_embeddings: bool = True
) -> Any:
    """Configure a (PEFT-wrapped) model for low-memory training; returns it.

    Activation memory dominates once the logits are gone (about 5 GB at batch 8 x 256 tokens for the
    135M model, 30 layers): gradient checkpointing keeps only each decoder layer's input and recomputes the
    rest during backward (~30% more compute). The embeddings (tied with ``lm_head`` in SmolLM2, 28M
    parameters) are frozen unless ``frozen_embeddings`` is False.
    """
    if frozen_embeddings:
        freeze_embeddings(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if gradient_checkpointing:
        enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(base.config, "use_cache"):
        base.config.use_cache = False
    return model
