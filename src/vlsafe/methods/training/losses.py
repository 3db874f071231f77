"""Memory-lean losses of the safety baselines: reply-only cross-entropy and per-sequence log-likelihoods
for SFT, and the DPO / IPO preference loss as a pure function of four log-probability vectors.

Both model-side functions run the decoder once, gather the hidden states of the supervised positions
(labels != -100) and apply ``lm_head`` to those rows only, a chunk at a time under activation
checkpointing, so the ``B x T x V`` logits never exist (the vocabulary is 49k-256k for the models in use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from vlsafe.core.errors import InputError
from vlsafe.methods.training.encoding import IGNORE_INDEX
from vlsafe.models.structure import decoder_and_head

__all__ = ["DPOLossOutput", "dpo_loss", "sequence_logps"]


def _chunk_logp(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def sequence_logps(
    model: Any, inputs: dict[str, Any], labels: torch.Tensor, chunk_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token log-probabilities of the labelled tokens of each row.

    Args:
        model: a causal LM or VLM (optionally peft-wrapped) with ``.model`` and output embeddings.
        inputs: model inputs (``input_ids``, ``attention_mask``, image tensors).
        labels: ``[B, T]`` token ids, ``-100`` where not scored (position ``t`` is predicted from ``t-1``).
        chunk_size: rows per ``lm_head`` call.

    Returns:
        ``(logps [B], counts [B])``: the sum of log-probabilities and the number of scored tokens per row.
    """
    decoder, head = decoder_and_head(model)
    hidden = decoder(**inputs, use_cache=False).last_hidden_state
    if labels.shape != hidden.shape[:2]:
        raise InputError(
            f"labels shape {tuple(labels.shape)} does not match the sequence shape {tuple(hidden.shape[:2])}"
        )
    targets = labels[:, 1:].to(hidden.device)
    keep = targets != IGNORE_INDEX
    counts = keep.sum(dim=1)
    if int(counts.min()) == 0:
        raise InputError("a row has no scored token (all its labels are -100)")
    rows = hidden[:, :-1][keep]
    tgt = targets[keep]
    row_of = keep.nonzero()[:, 0]
    pieces = []
    for start in range(0, rows.shape[0], chunk_size):
        h, t = rows[start : start + chunk_size], tgt[start : start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logp, head, h, t, use_reentrant=False))
        else:
            pieces.append(_chunk_logp(head, h, t))
    token_logps = torch.cat(pieces)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, row_of, token_logps), counts


@dataclass
class DPOLossOutput:
    """The preference loss and its diagnostics (all per-pair tensors have shape ``[B]``).

    ``chosen_rewards`` / ``rejected_rewards`` are the implicit rewards ``beta * (log pi - log pi_ref)``.
    """

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracy(self) -> float:
        """Share of pairs whose chosen reward exceeds the rejected one."""
        return float((self.margins > 0).float().mean())


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    *,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
    label_smoothing: float = 0.0,
) -> DPOLossOutput:
    """Direct preference optimisation loss over a batch of pairs.

    With ``h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)`` (log-ratio difference):

    * ``sigmoid`` (DPO, Rafailov et al. 2023; conservative DPO when ``label_smoothing`` > 0):
      ``-(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)``;
    * ``ipo`` (Azar et al. 2023): ``(h - 1 / (2 * beta))^2`` (the inputs should then be length-averaged
      log-probabilities).

    Args:
        policy_chosen, policy_rejected: ``[B]`` log-probabilities of the replies under the trained model.
        ref_chosen, ref_rejected: the same under the frozen reference model (no gradient needed).
        beta: inverse temperature (> 0).
        loss_type: ``sigmoid`` or ``ipo``.
        label_smoothing: assumed share of flipped preference labels, in ``[0, 0.5)``.

    Returns:
        :class:`DPOLossOutput` with the mean loss.
    """
    if beta <= 0:
        raise InputError(f"beta={beta} must be > 0")
    if not 0.0 <= label_smoothing < 0.5:
        raise InputError(f"label_smoothing={label_smoothing} must lie in [0, 0.5)")
    shapes = {tuple(t.shape) for t in (policy_chosen, policy_rejected, ref_chosen, ref_rejected)}
    if len(shapes) != 1:
        raise InputError(f"the four log-probability tensors must have one shape; got {sorted(shapes)}")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise InputError(f"loss_type={loss_type!r} is unknown; use 'sigmoid' or 'ipo'")
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return DPOLossOutput(losses.mean(), losses, chosen_rewards, rejected_rewards)
