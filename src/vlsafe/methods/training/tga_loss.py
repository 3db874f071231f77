"""The TGA loss: answer cross-entropy plus the text-guided alignment term, in three named forms.

At each guided decoder layer ``j`` (output of the layer), ``I_j`` is the mean hidden state over the image-token
span, ``R_j`` the mean over the retrieved-text span and ``C_j`` the mean over the caption tokens of the caption
alone, run through the current model in eval mode under ``no_grad`` (as released). With ``t`` the training
progress ``step / max_steps`` in ``[0, 1]`` and ``λ`` the guide weight, the forms (:data:`GUIDE_FORMS`) are:

* ``paper`` (the paper's equation): ``L = CE + λ(step) · Σ_j mean_b[ −cos(I_j, C_j) + softplus(cos(R_j, C_j) −
  cos(I_j, C_j)) ]``, with ``λ(step)`` constant or ``λ · (1 − t)`` (the default schedule of this form).
* ``released`` (the released code's terms, with gradient): ``L = CE + λ · (1/|L|) Σ_j mean_b[ 0.25 (1 − t)
  exp(−cos(I_j, C_j)) + 0.1 (1 − t)² exp(cos(R_j, C_j) − cos(I_j, C_j)) ]``; the ``(1 − t)`` factors are its
  schedule, so ``λ`` is constant by default.
* ``released-no-grad`` (what the released code trains: its ``math.exp`` returns a Python float, so the guide
  terms reach the loss as a constant): the value of ``released``, with the guide terms detached, so the gradient
  is the cross-entropy's of the retrieval prompts alone.

Rows without retrieved text drop the ranking term (softplus / second exp). The released code guides hidden
states 10–18 of a 32-layer LLM (``hidden_states[k]`` is the output of decoder layer ``k − 1``): decoder layers
9–17 here.

Hidden states come from forward hooks on the decoder layers that keep the autograd graph (no detach), and
the hooks are removed before backward, so activation checkpointing's recomputation never sees them.

:class:`TGATrainer` is the engine (a ``transformers.Trainer`` with :class:`~vlsafe.methods.training.engine.EngineMixin`)
whose ``compute_loss`` is :func:`tga_loss_terms`: both forward passes go through the model as transformers wrapped
it (DDP, FSDP, DeepSpeed), the caption pass under ``torch.no_grad()``, and the cross-entropy's logits are computed
at the supervised positions only (``logits_to_keep``). :class:`TGALoss` computes the same loss as a plain loss
function on the unwrapped model (the decoder and ``lm_head`` called directly).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer as HFTrainer

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import read_json
from vlsafe.core.paths import SAFETY_LAYERS_FILE, SAFETY_LAYERS_FORMAT
from vlsafe.methods.training.data import TGABatch
from vlsafe.methods.training.engine import EngineMixin, LossOutput
from vlsafe.methods.training.memory import IGNORE_INDEX, answer_only_loss
from vlsafe.methods.training.stages import unwrap
from vlsafe.models.bundle import ModelBundle


@contextmanager
def layer_outputs(
    layers: Sequence[nn.Module] | nn.ModuleList, indices: Sequence[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """Record the hidden-state output of ``layers[j]`` for ``j`` in ``indices`` (first call per layer),
    keeping gradients. Hooks are removed on exit."""
    store: dict[int, torch.Tensor] = {}
    handles = []

    def make(j: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if j not in store:
                store[j] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    try:
        for j in indices:
            handles.append(layers[j].register_forward_hook(make(j)))
        yield store
    finally:
        for h in handles:
            h.remove()


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden [B, T, D]`` over the True positions of ``mask [B, T]`` → ``[B, D]`` (0 for empty rows)."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def guide_terms(
    image: torch.Tensor, caption: torch.Tensor, retrieved: torch.Tensor, has_retrieved: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bracket of one layer, averaged over the batch, and the mean cos(I, C), cos(R, C).

    Args:
        image, caption, retrieved: ``[B, D]`` span means ``I_j``, ``C_j``, ``R_j``.
        has_retrieved: ``[B]`` rows whose retrieved span is non-empty.
    """
    dtype = torch.promote_types(image.dtype, torch.float32)  # at least fp32 (bf16 states are upcast)
    image, caption, retrieved = image.to(dtype), caption.to(dtype), retrieved.to(dtype)
    cos_ic = F.cosine_similarity(image, caption, dim=-1)
    cos_rc = F.cosine_similarity(retrieved, caption, dim=-1)
    rank = F.softplus(cos_rc - cos_ic) * has_retrieved.float()
    term = (-cos_ic + rank).mean()
    n_r = has_retrieved.float().sum().clamp(min=1.0)
    return term, cos_ic.detach().mean(), (cos_rc.detach() * has_retrieved).sum() / n_r


def released_guide_terms(
    image: torch.Tensor,
    caption: torch.Tensor,
    retrieved: torch.Tensor,
    has_retrieved: torch.Tensor,
    progress: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The released code's bracket of one layer, averaged over the batch, and the mean cos(I, C), cos(R, C):
    ``mean_b[0.25 (1 − t) exp(−cos(I, C)) + 0.1 (1 − t)² exp(cos(R, C) − cos(I, C))]`` (``t`` = ``progress``),
    with gradient (the released ``math.exp`` had none: see :data:`GUIDE_FORMS`)."""
    dtype = torch.promote_types(image.dtype, torch.float32)
    image, caption, retrieved = image.to(dtype), caption.to(dtype), retrieved.to(dtype)
    cos_ic = F.cosine_similarity(image, caption, dim=-1)
    cos_rc = F.cosine_similarity(retrieved, caption, dim=-1)
    rest = 1.0 - progress
    align = 0.25 * rest * torch.exp(-cos_ic)
    rank = 0.1 * rest**2 * torch.exp(cos_rc - cos_ic) * has_retrieved.to(dtype)
    n_r = has_retrieved.float().sum().clamp(min=1.0)
    return (align + rank).mean(), cos_ic.detach().mean(), (cos_rc.detach() * has_retrieved).sum() / n_r


#: The named forms of the guide loss (see the module docstring); ``paper`` is the default.
GUIDE_FORMS = ("paper", "released", "released-no-grad")


def check_form(form: str) -> str:
    """``form`` when it is one of :data:`GUIDE_FORMS`.

    Raises:
        ConfigError: another value (named, with the known forms).
    """
    if form not in GUIDE_FORMS:
        raise ConfigError(f"guide form {form!r} is unknown; it must be one of {', '.join(GUIDE_FORMS)}")
    return form


def middle_third(num_layers: int) -> list[int]:
    """Layers ``[n // 3, 2n // 3)`` (at least one layer)."""
    lo, hi = num_layers // 3, max(num_layers // 3 + 1, (2 * num_layers) // 3)
    return list(range(lo, min(hi, num_layers)))


def layers_from_analysis(path: str | Path, variant: str = "text") -> list[int]:
    """Guided layers from a ``vlsafe analyze layers`` folder: the safety layers it names for ``variant`` in its
    ``safety_layers.json`` (the activation layer through the end layer)."""
    file = Path(path) / SAFETY_LAYERS_FILE
    if not file.is_file():
        raise ConfigError(
            f"{str(path)!r} has no {SAFETY_LAYERS_FILE}: give a folder written by `vlsafe analyze layers`"
        )
    data = read_json(file, "safety layers")
    layers = (
        data.get("layers") if isinstance(data, dict) and data.get("format") == SAFETY_LAYERS_FORMAT else None
    )
    if not isinstance(layers, dict):
        raise ConfigError(f"{file} is not a {SAFETY_LAYERS_FORMAT} file")
    if variant not in layers:
        raise ConfigError(f"{file} has no variant {variant!r}; it has {sorted(layers)}")
    if not layers[variant]:
        raise ConfigError(f"{path}: no query reached a safety activation layer; give guide.layers explicitly")
    return [int(j) for j in layers[variant]]


class TGALoss:
    """``(model, TGABatch, step) -> LossOutput`` for :class:`vlsafe.methods.training.Trainer`.

    Args:
        bundle: the model (its decoder layers are hooked).
        layers: guided layer indices (validated against the model).
        weight: ``λ``.
        schedule: ``constant``, ``linear`` (``λ · (1 − step / max_steps)``) or ``None``: the form's own
            (``linear`` for ``paper``; ``constant`` for the released forms, whose terms carry ``(1 − t)``).
        max_steps: steps of the stage, for the linear schedule and the released forms' progress ``t``.
        ce_weight: weight of the cross-entropy (0 gives the guide loss alone, for tests/ablations).
        form: ``paper``, ``released`` or ``released-no-grad`` (:data:`GUIDE_FORMS`).

    Raises:
        ConfigError: no layer, an unknown schedule or form.
    """

    def __init__(
        self,
        bundle: ModelBundle,
        layers: Sequence[int],
        weight: float = 1.0,
        schedule: Literal["constant", "linear"] | None = "constant",
        max_steps: int = 1,
        ce_weight: float = 1.0,
        form: str = "paper",
    ) -> None:
        if not layers:
            raise ConfigError("TGA needs at least one guided layer")
        self.form = check_form(form)
        if schedule is None:
            schedule = "linear" if form == "paper" else "constant"
        if schedule not in ("constant", "linear"):
            raise ConfigError(f"unknown guide schedule {schedule!r}; known: constant, linear")
        self.bundle = bundle
        self.layers = sorted({bundle.check_layer(j) for j in layers})
        self.weight, self.schedule, self.max_steps, self.ce_weight = weight, schedule, max_steps, ce_weight

    def progress(self, step: int) -> float:
        """Training progress ``t = step / max_steps`` in ``[0, 1]``."""
        return min(1.0, max(0.0, step / max(1, self.max_steps)))

    def lam(self, step: int) -> float:
        """``λ`` at optimizer step ``step``."""
        if self.schedule == "linear":
            return self.weight * (1.0 - self.progress(step))
        return self.weight

    @torch.no_grad()
    def caption_states(self, model: Any, batch: TGABatch) -> dict[int, torch.Tensor]:
        """``C_j`` for every guided layer: caption-token means of the caption alone (eval mode, no grad)."""
        decoder = unwrap(model).model
        was_training = decoder.training
        decoder.eval()
        try:
            with layer_outputs(self.bundle.layers, self.layers) as store:
                decoder(**batch.caption_inputs, use_cache=False)
        finally:
            decoder.train(was_training)
        return {j: masked_mean(store[j], batch.caption_mask) for j in self.layers}

    def combine(
        self,
        ce: torch.Tensor,
        store: dict[int, torch.Tensor],
        captions: dict[int, torch.Tensor],
        batch: TGABatch,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of this form from the cross-entropy, the guided layers' hidden states of the prompt + answer
        pass (``store``) and the caption states; returns it and its components."""
        has_r = batch.retrieved_mask.any(dim=1)
        guide = ce.new_zeros((), dtype=torch.promote_types(ce.dtype, torch.float32))
        cos_ic, cos_rc = [], []
        t = self.progress(step)
        for j in self.layers:
            h = store[j]
            spans = (masked_mean(h, batch.image_mask), captions[j], masked_mean(h, batch.retrieved_mask), has_r)
            if self.form == "paper":
                term, ic, rc = guide_terms(*spans)
            else:
                term, ic, rc = released_guide_terms(*spans, progress=t)
            guide = guide + term
            cos_ic.append(float(ic))
            cos_rc.append(float(rc))
        if self.form != "paper":
            guide = guide / len(self.layers)
        if self.form == "released-no-grad":
            guide = guide.detach()  # the released math.exp: a float, no gradient
        lam = self.lam(step)
        loss = self.ce_weight * ce + lam * guide
        metrics = {
            "ce": float(ce.detach()),
            "guide": float(guide.detach()),
            "lambda": lam,
            "cos_ic": sum(cos_ic) / len(cos_ic),
            "cos_rc": sum(cos_rc) / len(cos_rc),
        }
        return loss, metrics

    def __call__(self, model: Any, batch: TGABatch, step: int) -> LossOutput:
        if not bool(batch.image_mask.any(dim=1).all()):
            raise InputError("every TGA training row needs image tokens; a row has none")
        captions = self.caption_states(model, batch)
        with layer_outputs(self.bundle.layers, self.layers) as store:
            ce = answer_only_loss(model, batch.inputs, batch.labels)
        loss, metrics = self.combine(ce, store, captions, batch, step)
        return LossOutput(loss, metrics)


def _caption_states_wrapped(tga: TGALoss, model: Any, batch: TGABatch) -> dict[int, torch.Tensor]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), layer_outputs(tga.bundle.layers, tga.layers) as store:
            model(**batch.caption_inputs, use_cache=False, logits_to_keep=1)
    finally:
        model.train(was_training)
    return {j: masked_mean(store[j], batch.caption_mask) for j in tga.layers}


def supervised_ce(model: Any, inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the supervised positions (``labels != -100``), from one forward pass
    of ``model`` itself (any wrapper) with the logits of those positions only (``logits_to_keep``), in float32.

    The value of :func:`~vlsafe.methods.training.memory.answer_only_loss`, without calling the decoder and
    ``lm_head`` directly.

    Raises:
        InputError: no supervised position.
    """
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        raise InputError("no supervised position in the batch (all labels are -100)")
    positions = keep.any(dim=0).nonzero().squeeze(1)
    logits = model(**inputs, use_cache=False, logits_to_keep=positions).logits.float()
    chosen = targets[:, positions].reshape(-1).to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chosen, ignore_index=IGNORE_INDEX,
                           reduction="sum") / count  # fmt: skip


def tga_loss_terms(
    tga: TGALoss, model: Any, batch: TGABatch, step: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The TGA loss of ``batch`` at optimizer step ``step`` through ``model`` as the backend wrapped it.

    The same loss as ``tga(model, batch, step)`` (:class:`TGALoss`), computed with forward passes of ``model``
    itself: the captions under ``torch.no_grad()`` in eval mode, then the full prompt + answer with the logits
    of the supervised positions only (``logits_to_keep``), in float32.

    Returns:
        The loss and its components (``ce``, ``guide``, ``lambda``, ``cos_ic``, ``cos_rc``).
    """
    if not bool(batch.image_mask.any(dim=1).all()):
        raise InputError("every TGA training row needs image tokens; a row has none")
    captions = _caption_states_wrapped(tga, model, batch)
    with layer_outputs(tga.bundle.layers, tga.layers) as store:
        ce = supervised_ce(model, batch.inputs, batch.labels)
    return tga.combine(ce, store, captions, batch, step)


class TGATrainer(EngineMixin, HFTrainer):
    """The TGA engine: a ``transformers.Trainer`` whose ``compute_loss`` is :func:`tga_loss_terms`.

    Keyword args (besides :class:`~vlsafe.methods.training.engine.EngineMixin`'s and ``transformers.Trainer``'s):
        tga: the :class:`TGALoss` holding the guided layers, ``λ`` and its schedule, and the CE weight.
    """

    def __init__(self, *args: Any, tga: TGALoss, **kwargs: Any) -> None:
        self.tga = tga
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:  # fmt: skip
        loss, metrics = tga_loss_terms(self.tga, model, inputs, int(self.state.global_step))
        self.record_metrics({"loss": float(loss.detach()), **metrics})
        return (loss, None) if return_outputs else loss
