"""Map tensor names between a VLM checkpoint and the text-only LLM it was built from.

A VLM stores its language model under a family-specific prefix, while the LLM stores the same
tensors under ``model.*`` and ``lm_head.*``. The *canonical* name of a language-model tensor is its
name in the LLM checkpoint. Known VLM layouts:

==================================  ===========================  ==========================
layout (seen in)                    decoder body                 LM head
==================================  ===========================  ==========================
transformers 5 in memory, new hub   ``model.language_model.*``   ``lm_head.*``
LLaVA / Gemma3 hub checkpoints      ``language_model.model.*``   ``language_model.lm_head.*``
Idefics3 / SmolVLM                  ``model.text_model.*``       ``lm_head.*``
Qwen2-VL / Qwen2.5-VL hub, an LLM   ``model.*``                  ``lm_head.*``
==================================  ===========================  ==========================

Everything else (vision tower, projector, ``image_newline``) has no canonical name: it is not
part of the language model. This module is dependency-free and its API is stable: the weight
analysis reuses it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "LM_LAYOUTS",
    "LmLayout",
    "detect_layout",
    "layer_index",
    "llm_name_for",
    "vlm_name_for",
]


@dataclass(frozen=True)
class LmLayout:
    """Where a checkpoint keeps its language model.

    Attributes:
        body: prefix of the decoder body (embeddings, layers, final norm), e.g. ``"model.language_model."``.
        head: prefix of the output head, e.g. ``"lm_head."``.
    """

    body: str
    head: str


#: Known layouts, most specific first (the plain LLM layout ``model.*`` last).
LM_LAYOUTS: tuple[LmLayout, ...] = (
    LmLayout("model.language_model.", "lm_head."),
    LmLayout("language_model.model.", "language_model.lm_head."),
    LmLayout("model.text_model.", "lm_head."),
    LmLayout("model.", "lm_head."),
)

#: First name components that a plain ``model.*`` decoder body may have (anything else under ``model.``,
#: such as ``model.visual`` or ``model.vision_tower``, is not language model).
_BODY_PARTS = frozenset(
    {"embed_tokens", "layers", "norm", "rotary_emb", "final_layernorm", "embed_positions"}
)
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def llm_name_for(vlm_name: str) -> str | None:
    """The canonical (text-only LLM) name of a checkpoint tensor, or ``None`` if it is not language model.

    Works on VLM names of every layout in :data:`LM_LAYOUTS` and on LLM names (which map to themselves).

    Examples:
        >>> llm_name_for("language_model.model.layers.3.mlp.up_proj.weight")
        'model.layers.3.mlp.up_proj.weight'
        >>> llm_name_for("model.language_model.embed_tokens.weight")
        'model.embed_tokens.weight'
        >>> llm_name_for("language_model.lm_head.weight")
        'lm_head.weight'
        >>> llm_name_for("vision_tower.encoder.layers.0.mlp.fc1.weight") is None
        True
    """
    for layout in LM_LAYOUTS[:-1]:
        if vlm_name.startswith(layout.body):
            return "model." + vlm_name[len(layout.body) :]
        if layout.head != "lm_head." and vlm_name.startswith(layout.head):
            return "lm_head." + vlm_name[len(layout.head) :]
    if vlm_name.startswith("lm_head."):
        return vlm_name
    if vlm_name.startswith("model."):
        first = vlm_name[len("model.") :].split(".", 1)[0]
        return vlm_name if first in _BODY_PARTS else None
    return None


def vlm_name_for(llm_name: str, prefix: LmLayout | str) -> str:
    """The name a canonical LLM tensor has in a checkpoint of the given layout.

    Args:
        llm_name: canonical name (``model.*`` or ``lm_head.*``).
        prefix: the target layout, or just its body prefix (the head prefix is then the one of the known
            layout with that body, ``lm_head.`` for an unknown body).

    Raises:
        ValueError: ``llm_name`` is not a canonical language-model name.
    """
    layout = prefix if isinstance(prefix, LmLayout) else _layout_for_body(prefix)
    if llm_name.startswith("model."):
        return layout.body + llm_name[len("model.") :]
    if llm_name.startswith("lm_head."):
        return layout.head + llm_name[len("lm_head.") :]
    raise ValueError(
        f"{llm_name!r} is not a canonical LLM tensor name (must start with 'model.' or 'lm_head.')"
    )


def _layout_for_body(body: str) -> LmLayout:
    body = body if body.endswith(".") else body + "."
    for layout in LM_LAYOUTS:
        if layout.body == body:
            return layout
    return LmLayout(body, "lm_head.")


def detect_layout(names: Iterable[str]) -> LmLayout | None:
    """The layout of a checkpoint from its tensor names (``None`` when it holds no language model)."""
    names = list(names)
    for layout in LM_LAYOUTS:
        if any(n.startswith(layout.body) and llm_name_for(n) is not None for n in names):
            return layout
    return None


def layer_index(name: str) -> int | None:
    """The decoder-layer index of a tensor (any layout), or ``None`` for non-layer tensors.

    Examples:
        >>> layer_index("language_model.model.layers.12.self_attn.q_proj.weight")
        12
        >>> layer_index("model.embed_tokens.weight") is None
        True
    """
    canonical = llm_name_for(name)
    if canonical is None:
        return None
    match = _LAYER_RE.match(canonical)
    return int(match.group(1)) if match else None
