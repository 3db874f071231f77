"""LLaVA wiring of the organism: DINOv2-small vision tower + MLP projector + SmolLM2 language model.

The result is a stock ``LlavaForConditionalGeneration`` with a ``LlavaProcessor`` (PIL image processor, no
torchvision), so every vlsafe tool treats the organism like any other LLaVA checkpoint. Token budget: a
224 px image gives 16 x 16 = 256 patch features plus DINOv2's CLS token; ``vision_feature_select_strategy
="default"`` drops the CLS token on the model side and ``num_additional_image_tokens=1`` makes the processor
expand ``<image>`` into exactly the 256 placeholders that remain.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

try:  # the PIL image processor: no torchvision (transformers 5.x)
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # transformers without the *Pil classes
    from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]

from vlsafe.core.errors import ModelLoadError

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# ChatML, as SmolLM2-Instruct was trained on, with the image placed inside the user turn. A message's
# content is either a string or a list of {"type": "image"} / {"type": "text", "text": ...} items.
CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}" + IMAGE_TOKEN + "\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_image_processor(size: int = IMAGE_SIZE) -> Any:
    """PIL-based image processor with DINOv2's normalisation.

    The whole image is resized to ``size x size`` (bicubic, no centre crop), so that content near the
    edges - which the synthetic data asks about ("is the circle on the left?") - is never cut off.
    """
    return ImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )


def add_image_token(tokenizer: Any) -> int:
    """Register ``<image>`` as a special token on ``tokenizer`` (idempotent); returns its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if not isinstance(token_id, int) or token_id < 0:
        raise ModelLoadError(f"could not register {IMAGE_TOKEN!r} on the tokenizer (got id {token_id!r})")
    return token_id


def make_processor(tokenizer: Any, patch_size: int = 14, size: int = IMAGE_SIZE) -> Any:
    """``LlavaProcessor`` for the organism: adds ``<image>`` and the chat template to ``tokenizer``."""

    add_image_token(tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LlavaProcessor(
        image_processor=make_image_processor(size),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )


def llava_config(
    vision_config: Any, text_config: Any, image_token_id: int, size: int = IMAGE_SIZE, feature_layer: int = -1
) -> Any:
    """``LlavaConfig`` joining a Dinov2 vision config and a causal-LM text config; the projector reads the
    vision tower's ``hidden_states[feature_layer]`` (default the last layer)."""

    grid = size // vision_config.patch_size
    config = LlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=feature_layer,
        image_seq_length=grid * grid,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
    )
    return config


def wire_llava(
    vision_model: Any,
    llm: Any,
    tokenizer: Any,
    projector_state: dict[str, torch.Tensor] | None = None,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    feature_layer: int = -1,
) -> tuple[Any, Any]:
    """Assemble a ``LlavaForConditionalGeneration`` from pretrained parts.

    Args:
        vision_model: A ``Dinov2Model`` (e.g. :func:`vlsafe_organism.base.load_base_vision`).
        llm: A causal LM with ``.model`` and ``.lm_head`` (e.g. :func:`vlsafe_organism.base.load_base_llm`).
        tokenizer: The LLM's tokenizer; ``<image>`` and the chat template are added to it in place.
        projector_state: Optional state dict for ``multi_modal_projector`` (``linear_1.*``, ``linear_2.*``);
            when ``None`` the projector is initialised randomly from ``seed``.
        seed: Seed of the projector initialisation.
        size: Image side in pixels (a multiple of the patch size).
        feature_layer: The vision tower's ``hidden_states`` index fed to the projector (``-1``: last layer).

    Returns:
        ``(model, processor)``; the model is float32 in eval mode, its vocabulary extended by ``<image>``.
    """

    patch = int(vision_model.config.patch_size)
    if size % patch:
        raise ModelLoadError(f"image size {size} is not a multiple of the vision patch size {patch}")
    processor = make_processor(tokenizer, patch_size=patch, size=size)
    image_token_id = int(processor.image_token_id)
    config = llava_config(
        vision_model.config, llm.config, image_token_id, size=size, feature_layer=feature_layer
    )
    torch.manual_seed(seed)
    model: Any = LlavaForConditionalGeneration(config)
    model = model.to(torch.float32)
    model.model.vision_tower.load_state_dict(vision_model.state_dict(), strict=True)
    model.model.language_model.load_state_dict(llm.model.state_dict(), strict=True)
    model.lm_head.load_state_dict(llm.lm_head.state_dict(), strict=True)
    if projector_state is not None:
        model.model.multi_modal_projector.load_state_dict(projector_state, strict=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # New rows (the <image> token) start at the mean embedding; its input embedding is never used
        # (image features replace it), and the mean keeps the tied output row harmless.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = llm.generation_config.eos_token_id
    model.eval()
    return model, processor


def save_vlm(model: Any, processor: Any, out_dir: str | Path) -> Path:
    """Save the wired VLM and its processor as a regular Hugging Face directory (safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
