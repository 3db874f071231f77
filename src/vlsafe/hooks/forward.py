"""One prefill forward pass of a batch with several recorders: selected positions of every chosen layer."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import torch

from vlsafe.hooks.record import record_hidden_states
from vlsafe.models import BatchInputs, InputItem, ModelBundle, Variant, build_inputs

States = dict[str, dict[int, torch.Tensor]]


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _keeps_logits(model: Any) -> bool:
    return _accepts(model, "logits_to_keep")


class _StopForward(Exception):
    """Raised by a hook after the last layer whose states are needed, to skip the rest of the model."""


def _stop_hook(module: Any, args: Any, output: Any) -> None:
    raise _StopForward


def build_variant(
    bundle: ModelBundle, items: Sequence[InputItem | str], variant: Variant | str, seed: int = 0
) -> BatchInputs:
    """The batch of ``items`` under ``variant`` (noise images seeded by ``seed`` + row)."""
    return build_inputs(bundle, list(items), Variant(variant), seed=seed)


def forward_states(
    bundle: ModelBundle,
    batch: BatchInputs,
    layers: Sequence[int],
    positions: Sequence[str],
    *,
    full_logits: bool = False,
    need_output: bool = True,
) -> tuple[States, Any]:
    """Run ``batch`` through the model (no grad) and return ``{position: {layer: [B, H] float32}}``.

    Positions are those of :func:`vlsafe.hooks.record_hidden_states` that give one vector per row
    (``last``, ``text_mean``, ``image_mean``, ``mean``). Unless ``full_logits`` is set, only the last
    position's logits are computed when the model supports ``logits_to_keep`` (hidden states do not change).
    No KV cache is built (``use_cache=False`` where the model takes it): a prefill for analysis never
    continues, and the cache of every layer would otherwise stay alive with the output.

    With ``need_output=False`` the forward pass stops right after the last chosen layer (a hook raises a
    private exception that is caught here): the later layers, the final norm and the LM head — whose
    ``[B, 1, vocab]`` logits are the largest tensor of a short-prompt batch — are never run, which saves
    time and keeps the per-batch working memory small. The returned output is then None.

    Returns the states and the model output (None when ``need_output`` is False).
    """
    kwargs = dict(batch.to(bundle.device).inputs)
    if not full_logits and _keeps_logits(bundle.model):
        kwargs["logits_to_keep"] = 1
    if _accepts(bundle.model, "use_cache"):
        kwargs["use_cache"] = False
    output = None
    with ExitStack() as stack, torch.inference_mode():
        recorders = {}
        for pos in dict.fromkeys(positions):
            rec = stack.enter_context(record_hidden_states(bundle, list(layers), pos))  # type: ignore[arg-type]
            rec.set_batch(batch)
            recorders[pos] = rec
        if need_output:
            output = bundle.model(**kwargs)
        else:
            # registered after the recorders' hooks on the same module, so it runs after them
            handle = bundle.layers[max(layers)].register_forward_hook(_stop_hook)
            try:
                bundle.model(**kwargs)
            except _StopForward:
                pass
            finally:
                handle.remove()
    states = {pos: dict(rec.result().states) for pos, rec in recorders.items()}
    return states, output
