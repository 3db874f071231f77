"""Tiny random-weight models of every supported family, built offline in seconds.

Each tiny model has a 64-wide, 2-layer language model, a 1-layer vision tower on 28-56 px images, and
a byte-level BPE tokenizer trained locally (``tokenizers``) on a small built-in corpus, with a chat
template and the family's special tokens. They exist for tests and examples: outputs are noise, but
shapes, token layouts and code paths are those of the real families.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

from vlsafe.core.errors import ConfigError
from vlsafe.models.families import get_family
from vlsafe.models.processors import make_processor, save_processor
from vlsafe.models.tiny_parts import SPECS, TEXT, FamilySpec, train_tokenizer

logger = logging.getLogger(__name__)

#: The VLM families that :func:`build_tiny` builds.
VLM_FAMILIES: tuple[str, ...] = (
    "llava",
    "llava_next",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "gemma3",
)
#: Every family :func:`build_tiny` builds (the VLMs plus a tiny Llama as ``causal_lm``).
TINY_FAMILIES: tuple[str, ...] = (*VLM_FAMILIES, "causal_lm")


def _text_config(vocab_size: int, ids: dict[str, int], **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": TEXT["hidden"],
        "intermediate_size": 2 * TEXT["hidden"],
        "num_hidden_layers": TEXT["layers"],
        "num_attention_heads": TEXT["heads"],
        "num_key_value_heads": TEXT["kv_heads"],
        "max_position_embeddings": 1024,
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def _build_config(family: str, tok: Any, spec: FamilySpec) -> Any:
    tf: Any = transformers

    ids = {
        "bos": tok.convert_tokens_to_ids(spec.bos),
        "eos": tok.convert_tokens_to_ids(spec.eos),
        "pad": tok.convert_tokens_to_ids(spec.pad),
    }
    vocab = len(tok)
    img = spec.image_token
    image_id = tok.convert_tokens_to_ids(img) if img else None
    text = _text_config(vocab, ids)
    vis_small: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    if family == "causal_lm":
        return tf.LlamaConfig(**text)
    if family in ("llava", "llava_next"):
        vision = tf.CLIPVisionConfig(**vis_small, image_size=spec.image_size, patch_size=spec.patch_size)
        common = {
            "vision_config": vision,
            "text_config": tf.LlamaConfig(**text),
            "image_token_id": image_id,
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "default",
        }
        if family == "llava":
            return tf.LlavaConfig(**common)
        return tf.LlavaNextConfig(**common, image_grid_pinpoints=spec.grid_pinpoints)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        head_dim = TEXT["hidden"] // TEXT["heads"]
        half = head_dim // 2
        section = [half - 2 * (half // 3), half // 3, half // 3]  # sums to head_dim / 2
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section}
        text_cfg = _text_config(vocab, ids, rope_parameters=rope)
        token_ids = {
            "image_token_id": image_id,
            "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
            "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
            "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>"),
        }
        merge = {"patch_size": spec.patch_size, "spatial_merge_size": 2, "temporal_patch_size": 2}
        if family == "qwen2_vl":
            vision = {
                "depth": 1,
                "embed_dim": 32,
                "num_heads": 2,
                "mlp_ratio": 2,
                "hidden_size": TEXT["hidden"],
            }
            return tf.Qwen2VLConfig(text_config=text_cfg, vision_config={**vision, **merge}, **token_ids)
        vision = {
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT["hidden"],
            "window_size": 2 * spec.patch_size * 2,
            "fullatt_block_indexes": [0],
        }
        return tf.Qwen2_5_VLConfig(text_config=text_cfg, vision_config={**vision, **merge}, **token_ids)
    if family in ("idefics3", "smolvlm"):
        vision = {**vis_small, "image_size": spec.image_size, "patch_size": spec.patch_size}
        cls = tf.Idefics3Config if family == "idefics3" else tf.SmolVLMConfig
        return cls(
            vision_config=vision,
            text_config=tf.LlamaConfig(**text).to_dict(),
            image_token_id=image_id,
            scale_factor=2,
            pad_token_id=ids["pad"],
        )
    if family == "gemma3":
        head_dim = TEXT["hidden"] // TEXT["heads"]
        text_cfg = tf.Gemma3TextConfig(**_text_config(vocab, ids, head_dim=head_dim, sliding_window=64))
        vision = tf.SiglipVisionConfig(**vis_small, image_size=spec.image_size, patch_size=spec.patch_size)
        return tf.Gemma3Config(
            text_config=text_cfg,
            vision_config=vision,
            mm_tokens_per_image=spec.image_tokens,
            boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
            eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
            image_token_index=image_id,
        )
    raise ConfigError(f"no tiny builder for family {family!r}; known: {', '.join(TINY_FAMILIES)}")


def _build_image_processor(family: str, spec: FamilySpec) -> Any:
    tf: Any = transformers

    s = spec.image_size
    if family == "llava":
        return tf.CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})
    if family == "llava_next":
        return tf.LlavaNextImageProcessorPil(
            size={"shortest_edge": s},
            crop_size={"height": s, "width": s},
            image_grid_pinpoints=spec.grid_pinpoints,
        )
    if family in ("qwen2_vl", "qwen2_5_vl"):
        pixels = s * s
        return tf.Qwen2VLImageProcessorPil(
            min_pixels=pixels,
            max_pixels=pixels,
            patch_size=spec.patch_size,
            merge_size=2,
            temporal_patch_size=2,
        )
    if family in ("idefics3", "smolvlm"):
        cls = tf.Idefics3ImageProcessorPil if family == "idefics3" else tf.SmolVLMImageProcessorPil
        return cls(do_image_splitting=False, size={"longest_edge": s}, max_image_size={"longest_edge": s})
    if family == "gemma3":
        return tf.Gemma3ImageProcessorPil(size={"height": s, "width": s})
    raise ConfigError(f"family {family!r} has no image processor")


def _processor_kwargs(family: str, spec: FamilySpec) -> dict[str, Any]:
    if family == "llava":
        return {
            "patch_size": spec.patch_size,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
        }
    if family == "llava_next":
        return {
            "patch_size": spec.patch_size,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
        }
    if family in ("idefics3", "smolvlm"):
        return {"image_seq_len": spec.image_tokens}
    if family == "gemma3":
        return {"image_seq_length": spec.image_tokens}
    return {}


def build_tiny(family: str, out_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """Write a tiny random-weight model of ``family`` (weights, config, tokenizer, processor) to a directory.

    Args:
        family: one of :data:`TINY_FAMILIES`.
        out_dir: target directory (created); a fresh temporary directory when ``None``.
        seed: seed of the random weights (the tokenizer is deterministic).

    Returns:
        The directory, loadable with ``vlsafe.models.load_model(dir)``.

    Raises:
        ConfigError: ``family`` is not one of :data:`TINY_FAMILIES`.
    """
    if family not in TINY_FAMILIES:
        raise ConfigError(f"no tiny builder for family {family!r}; known: {', '.join(TINY_FAMILIES)}")
    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix=f"vlsafe-tiny-{family}-"))
    out.mkdir(parents=True, exist_ok=True)
    spec = SPECS[family]
    tok = train_tokenizer(spec)
    config = _build_config(family, tok, spec)
    fam = get_family(family)
    torch.manual_seed(seed)

    tf: Any = transformers

    model_cls = tf.LlamaForCausalLM if family == "causal_lm" else fam.load_class()
    model = model_cls(config).eval()
    gen = model.generation_config
    gen.pad_token_id = tok.pad_token_id
    gen.eos_token_id = tok.eos_token_id
    gen.bos_token_id = tok.bos_token_id
    model.save_pretrained(out)
    if family == "causal_lm":
        tok.save_pretrained(out)
    else:
        processor = make_processor(
            fam,
            _build_image_processor(family, spec),
            tok,
            chat_template=tok.chat_template,
            **_processor_kwargs(family, spec),
        )
        save_processor(processor, fam, out)
    logger.info("built tiny %s model in %s", family, out)
    return out
