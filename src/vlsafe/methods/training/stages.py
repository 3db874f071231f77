"""Which parameters train: the projector, the LLM (full) or LoRA adapters on the LLM (via peft).

Module discovery is by attribute name on the inner ``model.model`` of the HF classes vlsafe supports:

==============================  =====================  ===============================
family                          projector              language model
==============================  =====================  ===============================
llava, llava_next, gemma3       ``multi_modal_projector``  ``language_model``
qwen2_vl, qwen2_5_vl            ``visual.merger``          ``language_model``
idefics3, smolvlm               ``connector``              ``text_model``
causal_lm                       (none)                     ``model`` itself
==============================  =====================  ===============================

LLaVA-NeXT's learned ``image_newline`` vector counts as part of the projector.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, Literal

from peft import LoraConfig, get_peft_model
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from vlsafe.core.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "LLM_PROJECTIONS",
    "LoraSettings",
    "Stage",
    "apply_stage",
    "language_model",
    "lora_target_regex",
    "projector_params",
    "unwrap",
]

#: What a training stage updates.
Stage = Literal["projector", "projector_llm", "projector_lora", "llm", "llm_lora"]

#: Leaf names of the linear layers of a Llama-style decoder layer (attention and MLP projections): the
#: default LoRA targets.
LLM_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PROJECTOR_PATHS = ("multi_modal_projector", "visual.merger", "connector")
_LLM_PATHS = ("language_model", "text_model")
_PROJECTOR_EXTRA_PARAMS = ("image_newline",)
#: the decoder layer index in a module name (``.layers.<i>.``)
_LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


class LoraSettings(BaseModel):
    """LoRA on the LLM's linear layers (peft)."""

    model_config = ConfigDict(extra="forbid")
    rank: int = Field(16, gt=0)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] = Field(
        default_factory=lambda: list(LLM_PROJECTIONS),
        description="leaf names of the LLM's nn.Linear modules that get adapters",
    )
    layers: list[int] | None = Field(
        default=None,
        description="decoder layer indices that get adapters (peft's layers_to_transform); unset: every layer",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError(f"layers={v} must be distinct decoder layer indices >= 0, at least one (or unset)")
        return v


def unwrap(model: Any) -> Any:
    """The HF model under a peft wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _get_path(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def projector_params(model: Any) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the vision-language projector (names relative to ``model``)."""
    base = unwrap(model)
    inner = getattr(base, "model", None)
    prefix = "model."
    for path in _PROJECTOR_PATHS:
        module = _get_path(inner, path)
        if isinstance(module, nn.Module):
            out = [(f"{prefix}{path}.{n}", p) for n, p in module.named_parameters()]
            for extra in _PROJECTOR_EXTRA_PARAMS:
                param = getattr(inner, extra, None)
                if isinstance(param, nn.Parameter):
                    out.append((f"{prefix}{extra}", param))
            return out
    raise ConfigError(
        f"{type(base).__name__} has no vision-language projector (looked for model.{', model.'.join(_PROJECTOR_PATHS)}); "
        "projector stages need a VLM"
    )


def language_model(model: Any) -> tuple[str, nn.Module]:
    """``(prefix, module)`` of the LLM decoder (without ``lm_head``)."""
    base = unwrap(model)
    inner = getattr(base, "model", None)
    for path in _LLM_PATHS:
        module = _get_path(inner, path)
        if isinstance(module, nn.Module):
            return f"model.{path}", module
    if isinstance(inner, nn.Module) and hasattr(inner, "layers"):
        return "model", inner  # text-only causal LM
    raise ConfigError(f"cannot find the language model inside {type(base).__name__}")


def lora_target_regex(
    model: Any, targets: Sequence[str] = LLM_PROJECTIONS, layers: Sequence[int] | None = None
) -> str:
    """A peft ``target_modules`` regex naming exactly the ``targets`` linear layers of ``model``'s language model.

    The names are read off the model (the decoder layers of :func:`language_model`), so a VLM's vision tower
    and projector, whose layers may share the leaf names, never get adapters; peft matches the regex against
    whole module names.

    Args:
        model: an HF VLM or causal LM (or a peft wrapper around one).
        targets: leaf names of the linear layers that get adapters.
        layers: decoder layer indices whose linear layers get adapters (default: every layer).

    Raises:
        ConfigError: no linear layer of the language model's decoder layers has one of the ``targets`` names, or
            ``layers`` names a layer the model does not have.
    """
    prefix, llm = language_model(model)
    found: list[tuple[int, str]] = []
    for name, mod in llm.named_modules():
        match = _LAYER_INDEX.search(f".{name}")
        if isinstance(mod, nn.Linear) and match and name.rsplit(".", 1)[-1] in targets:
            found.append((int(match.group(1)), f"{prefix}.{name}"))
    if not found:
        raise ConfigError(f"no nn.Linear named one of {list(targets)} in the LLM's layers; check lora.targets")
    if layers is not None:
        n_layers = max(i for i, _ in found) + 1
        if bad := sorted(set(layers) - set(range(n_layers))):
            raise ConfigError(f"lora.layers {bad} are not decoder layers of this model (layers 0-{n_layers - 1})")
        found = [(i, n) for i, n in found if i in set(layers)]
    return "|".join(re.escape(n) for _, n in found)


def apply_stage(model: Any, stage: Stage, lora: LoraSettings | None = None) -> Any:
    """Set ``requires_grad`` for ``stage``; wraps the model with LoRA (peft) for ``*_lora`` stages.

    Embeddings and ``lm_head`` never train (frozen, as in the released TGA recipe and for memory).
    A model that is already a peft model keeps its adapters (a second LoRA stage continues them).

    Returns:
        The model to train (the same object, or the new peft wrapper).
    """
    if stage not in Stage.__args__:  # type: ignore[attr-defined]
        raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(Stage.__args__)}")  # type: ignore[attr-defined]
    if stage.endswith("_lora") and not hasattr(model, "get_base_model"):

        settings = lora or LoraSettings.model_validate({})
        regex = lora_target_regex(model, settings.targets, settings.layers)
        config = LoraConfig(
            r=settings.rank,
            lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft accepts floats
            lora_dropout=settings.dropout,
            target_modules=regex,
        )
        model = get_peft_model(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    if stage.startswith("projector"):
        for _, p in projector_params(model):
            p.requires_grad_(True)
    if stage in ("projector_llm", "llm"):
        _, llm = language_model(model)
        embed = getattr(unwrap(model), "get_input_embeddings", lambda: None)()
        frozen = {id(p) for p in embed.parameters()} if embed is not None else set()
        for p in llm.parameters():
            if id(p) not in frozen:
                p.requires_grad_(True)
    if stage.endswith("_lora"):
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n_train == 0:
        raise ConfigError(f"stage {stage!r} leaves no parameter to train in {type(unwrap(model)).__name__}")
    logger.info("stage %s: %d trainable parameters", stage, n_train)
    return model
