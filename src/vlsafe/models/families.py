"""Registry of the model families vlsafe knows how to drive, keyed by family name.

A family groups the HF ``model_type`` values that share a model class, a processor and the same
prompt/image quirks. ``family_for_model_type`` maps a checkpoint's ``config.model_type`` to its family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import transformers

from vlsafe.core.errors import ModelLoadError
from vlsafe.core.registry import Registry

#: ``model_type`` values loaded through ``AutoModelForCausalLM`` (text-only LLMs).
CAUSAL_LM_TYPES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "phi3",
    "olmo2",
    "granite",
    "smollm3",
)


@dataclass(frozen=True)
class Family:
    """What vlsafe needs to know about one model family.

    Attributes:
        name: family key ("llava", "qwen2_vl", ..., "causal_lm").
        model_types: HF ``config.model_type`` values of this family.
        model_class: name of the transformers class that loads it.
        description: one line for ``vlsafe models``.
        is_vlm: whether the family takes images.
        video_slot: the processor has a ``video_processor`` slot that vlsafe leaves empty.
        nested_images: the processor wants images nested per sample (``[[img], [img]]``).
        image_placeholder: the text the chat template puts where an image goes (before expansion).
    """

    name: str
    model_types: tuple[str, ...]
    model_class: str
    description: str
    is_vlm: bool = True
    video_slot: bool = False
    nested_images: bool = False
    image_placeholder: str = "<image>"

    def load_class(self) -> Any:
        """Return the transformers model class."""

        return getattr(transformers, self.model_class)

    def image_token_id(self, config: Any) -> int | None:
        """The id of the token that the vision features replace, read from the model config."""
        if not self.is_vlm:
            return None
        for attr in ("image_token_id", "image_token_index"):
            value = getattr(config, attr, None)
            if value is not None:
                return int(value)
        return None


FAMILIES: Registry[Family] = Registry("model family")

for _family in (
    Family(
        "llava",
        ("llava",),
        "LlavaForConditionalGeneration",
        "LLaVA-1.5 style: CLIP-like vision tower + MLP projector + LLM; one image -> fixed patch tokens",
    ),
    Family(
        "llava_next",
        ("llava_next",),
        "LlavaNextForConditionalGeneration",
        "LLaVA-NeXT (1.6): any-resolution tiling; token count depends on the image size",
    ),
    Family(
        "qwen2_vl",
        ("qwen2_vl",),
        "Qwen2VLForConditionalGeneration",
        "Qwen2-VL: native-resolution ViT with 2x2 patch merging and M-RoPE",
        video_slot=True,
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    ),
    Family(
        "qwen2_5_vl",
        ("qwen2_5_vl",),
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen2.5-VL: windowed-attention ViT with patch merging and M-RoPE",
        video_slot=True,
        image_placeholder="<|vision_start|><|image_pad|><|vision_end|>",
    ),
    Family(
        "idefics3",
        ("idefics3",),
        "Idefics3ForConditionalGeneration",
        "Idefics3: SigLIP-like encoder + pixel-shuffle connector; images nested per sample",
        nested_images=True,
    ),
    Family(
        "smolvlm",
        ("smolvlm",),
        "SmolVLMForConditionalGeneration",
        "SmolVLM: Idefics3 architecture with a small LLM; images nested per sample",
        video_slot=True,
        nested_images=True,
    ),
    Family(
        "gemma3",
        ("gemma3",),
        "Gemma3ForConditionalGeneration",
        "Gemma 3 image-text-to-text: SigLIP encoder + pooled soft tokens between <start_of_image>/<end_of_image>",
        image_placeholder="<start_of_image>",
    ),
    Family(
        "causal_lm",
        CAUSAL_LM_TYPES,
        "AutoModelForCausalLM",
        "any text-only causal LLM loadable with AutoModelForCausalLM (llama, mistral, qwen2, gemma, ...)",
        is_vlm=False,
        image_placeholder="",
    ),
):
    FAMILIES.register(_family.name, _family)


def get_family(name: str) -> Family:
    """Return the family registered as ``name`` (``ConfigError`` listing known names otherwise)."""
    return FAMILIES.get(name)


def family_for_model_type(model_type: str, *, allow_any_causal_lm: bool = False) -> Family:
    """Map an HF ``config.model_type`` to its family.

    Args:
        model_type: the checkpoint's ``config.model_type``.
        allow_any_causal_lm: accept an unknown type as ``causal_lm`` (the caller checked that
            ``AutoModelForCausalLM`` knows the type).

    Raises:
        ModelLoadError: the type is not supported; the message lists the supported families.
    """
    for name in FAMILIES:
        family = FAMILIES.get(name)
        if model_type in family.model_types:
            return family
    if allow_any_causal_lm:
        return FAMILIES.get("causal_lm")
    supported = "; ".join(f"{n} ({', '.join(FAMILIES.get(n).model_types)})" for n in FAMILIES)
    raise ModelLoadError(
        f"unsupported model_type {model_type!r}: vlsafe supports these families (model types): {supported}; "
        "causal_lm also takes any other decoder-only type that AutoModelForCausalLM loads as *ForCausalLM"
    )


def list_families() -> list[dict[str, Any]]:
    """Supported families for ``vlsafe models``: name, model types, description, is_vlm."""
    out = []
    for name in FAMILIES:
        family = FAMILIES.get(name)
        out.append(
            {
                "name": family.name,
                "model_types": list(family.model_types),
                "description": family.description,
                "is_vlm": family.is_vlm,
            }
        )
    return out
