"""Trained repairs of the organism as small committed weight deltas: TGA, safety SFT, DPO and joint training.

Each repair is trained by vlsafe's own trainers (:func:`vlsafe_organism.tga.run_tga_organism`,
:func:`vlsafe_organism.recipes.run_organism_baselines`) into a merged HF directory. What is committed is only
its *difference* from the organism system it started from (``organism:vlm`` for TGA and joint training,
``organism:vl`` for SFT and DPO): a low-rank factorisation ``B @ A`` of every changed 2-D weight whose change
has low rank (a merged LoRA update has rank <= r; the SVD recovers it up to float error), and the full new
value of every other changed tensor (the projector). Loading rebuilds the start system and adds the delta,
so ``organism:vl+sft`` etc. load like any other organism system (:mod:`vlsafe_organism.registry`).

Artefact keys: ``<param>.delta_A`` ``[r, in]`` and ``<param>.delta_B`` ``[out, r]`` (float16; the update is
``B @ A`` in float32), or ``<param>.value`` (the new tensor, float16).

A tensor that differs from its start only by float32 round-off (every element within :data:`ROUNDOFF_ULPS` units
in the last place) counts as unchanged: the start system is rebuilt on the fly, and a reduction computed in another
order (another torch thread count, e.g. the mean-initialised ``<image>`` embedding row) moves it by that much.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from vlsafe.core.errors import ModelLoadError

__all__ = ["TRAINED_REPAIRS", "apply_delta", "delta_tensors", "trained_system_names"]

#: repair name -> (organism system it starts from, artefact file)
TRAINED_REPAIRS: dict[str, tuple[str, str]] = {
    "tga": ("vlm", "tga_delta.safetensors"),
    "sft": ("vl", "sft_delta.safetensors"),
    "dpo": ("vl", "dpo_delta.safetensors"),
    "joint": ("vlm", "joint_delta.safetensors"),
}


#: a change of at most this many float32 units in the last place, element by element, is round-off, not training
ROUNDOFF_ULPS = 4


def _roundoff_only(a: torch.Tensor, b: torch.Tensor, delta: torch.Tensor) -> bool:
    if not (a.is_floating_point() and b.is_floating_point()):
        return False
    scale = torch.maximum(a.float().abs(), b.float().abs())
    return bool(torch.all(delta.abs() <= ROUNDOFF_ULPS * torch.finfo(torch.float32).eps * scale))


def trained_system_names() -> list[str]:
    """Organism system names of the trained repairs (``vl+tga``, ...)."""
    return [f"vl+{name}" for name in TRAINED_REPAIRS]


def _low_rank(delta: torch.Tensor, max_rank: int, rtol: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(A, B)`` with ``B @ A == delta`` up to ``rtol`` (relative Frobenius error), or None if that needs
    a rank above ``max_rank``. The rank is the smallest that leaves a residual below ``rtol / 4`` (float32
    rounding of the saved weights adds a full-rank noise floor far below that)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    energy = s.square()
    total = float(energy.sum())
    if total == 0.0:
        return None
    residual = (total - torch.cumsum(energy, 0)).clamp_min(0).sqrt() / total**0.5
    rank = int((residual > rtol / 4).sum()) + 1
    if rank > max_rank:
        return None
    b = (u[:, :rank] * s[:rank]).float()
    a = vh[:rank].float()
    err = float((b.half().float() @ a.half().float() - delta.float()).norm() / delta.float().norm())
    return (a, b) if err <= rtol else None


def delta_tensors(
    start: Mapping[str, torch.Tensor],
    trained: Mapping[str, torch.Tensor],
    *,
    max_rank: int = 64,
    rtol: float = 2e-2,
) -> dict[str, torch.Tensor]:
    """The artefact tensors that turn ``start`` into ``trained`` (see the module docstring).

    Unchanged tensors are left out, and so are tensors changed only by float32 round-off (:data:`ROUNDOFF_ULPS`).
    A changed 2-D tensor whose change has rank <= ``max_rank`` and is
    reproduced by the float16 factors within ``rtol`` is stored as factors, anything else as its new value.

    Raises:
        ModelLoadError: The two state dicts hold different tensor names or shapes.
    """
    if set(start) != set(trained):
        extra = sorted(set(start) ^ set(trained))[:5]
        raise ModelLoadError(f"start and trained checkpoints hold different tensors, e.g. {extra}")
    out: dict[str, torch.Tensor] = {}
    for name in sorted(start):
        a, b = start[name], trained[name]
        if a.shape != b.shape:
            raise ModelLoadError(
                f"tensor {name!r}: shape {tuple(a.shape)} in start, {tuple(b.shape)} trained"
            )
        delta = b.float() - a.float()
        if not torch.any(delta) or _roundoff_only(a, b, delta):
            continue
        factors = (
            _low_rank(delta, max_rank, rtol) if delta.dim() == 2 and min(delta.shape) > max_rank else None
        )
        if factors is None:
            out[f"{name}.value"] = b.detach().to(torch.float16).contiguous()
        else:
            out[f"{name}.delta_A"] = factors[0].to(torch.float16).contiguous()
            out[f"{name}.delta_B"] = factors[1].to(torch.float16).contiguous()
    return out


def apply_delta(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> int:
    """Apply artefact tensors to ``model`` in place; returns how many parameters changed.

    A key may name a tied parameter by either of its names (e.g. ``lm_head.weight`` tied to the input embeddings).

    Raises:
        ModelLoadError: A key names no parameter of the model, or a shape differs.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    with torch.no_grad():
        for name in names:
            p = params.get(name)
            if p is None:
                raise ModelLoadError(f"delta for {name!r} names no parameter of the model")
            if f"{name}.value" in tensors:
                new = tensors[f"{name}.value"].float()
            else:
                new = p.float() + tensors[f"{name}.delta_B"].float() @ tensors[f"{name}.delta_A"].float()
            if new.shape != p.shape:
                raise ModelLoadError(
                    f"delta for {name!r} has shape {tuple(new.shape)}; the parameter is {tuple(p.shape)}"
                )
            p.copy_(new.to(p.dtype))
    return len(names)
