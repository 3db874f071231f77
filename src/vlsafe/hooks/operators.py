"""Steering operators: how a vector changes a hidden state.

Each operator maps ``(hidden [..., H], vector [..., H], alpha) -> new hidden``; ``vector`` is
broadcast against ``hidden`` (a per-row vector has shape ``[B, 1, H]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlsafe.core.registry import Registry

Operator = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
OPERATORS: Registry[Operator] = Registry("steering operator")


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@OPERATORS.register("add")
def add(hidden: torch.Tensor, vector: torch.Tensor, alpha: float) -> torch.Tensor:
    """``h + alpha * v`` (activation addition; the CMRM intervention)."""
    return hidden + alpha * vector


@OPERATORS.register("ablate")
def ablate(hidden: torch.Tensor, vector: torch.Tensor, alpha: float) -> torch.Tensor:
    """Remove ``alpha`` times the component of ``h`` along ``v`` (``alpha=1``: full directional ablation)."""
    u = _unit(vector)
    return hidden - alpha * (hidden * u).sum(dim=-1, keepdim=True) * u


@OPERATORS.register("clamp")
def clamp(hidden: torch.Tensor, vector: torch.Tensor, alpha: float) -> torch.Tensor:
    """Set the projection of ``h`` on the unit direction of ``v`` to ``alpha``."""
    u = _unit(vector)
    proj = (hidden * u).sum(dim=-1, keepdim=True)
    return hidden + (alpha - proj) * u
