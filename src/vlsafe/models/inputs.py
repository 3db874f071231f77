"""Build model-ready batches for the input variants of design section 5.1, with position masks.

Prompt layout: one user turn rendered with the model's own chat template; for image variants the user
content is ``[image, text]`` (image first). The text part is the query, or for the caption variant
``CAPTION_FORMAT.format(caption=..., query=...)`` (``"Image description: {caption}\\n{query}"``). A query that
holds :data:`IMAGE_SLOT` once shows the image there instead (the text before the slot, the template's image
placeholder, the text after it; :func:`user_turn_layout`); text variants drop the slot.

Masks come from token ids and character offsets, never from fixed positions:

- ``image``: ``input_ids == bundle.image_token_id`` (the tokens replaced by vision features).
- ``text``: tokens whose character span (``offset_mapping`` of the tokenizer, mapped through the processor's
  image-placeholder expansion) overlaps the user text in the rendered prompt. The user text is located by
  rendering the template once with a sentinel in its place.
- ``last``: the last non-pad token of each row (batches are left-padded, so column ``T-1``).
- ``attention``: the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlsafe.core.errors import InputError
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.families import get_family
from vlsafe.models.images import make_variant_image
from vlsafe.models.inputs_types import BatchInputs, PositionMasks, Variant

#: How the caption variant writes the caption in place of the image.
CAPTION_FORMAT = "Image description: {caption}\n{query}"

#: Placeholder rendered in place of the user text to locate it in a chat template's output.
USER_TEXT_SENTINEL = "\ue000vlsafe-user-text\ue001"

#: Written in a query, shows the image at that point of the user text (image variants; text variants drop it).
IMAGE_SLOT = "<vlsafe:image>"


@dataclass
class InputItem:
    """One query with its optional image (path or PIL image) and caption."""

    text: str
    image: Any = None
    caption: str | None = None


def as_input_items(
    items: Sequence[Any], images: Sequence[Any] | None, captions: Sequence[str | None] | None
) -> list[InputItem]:
    """Normalise queries (strings, ``{"text", "image", "caption"}`` dicts or :class:`InputItem`) to fresh
    :class:`InputItem` objects; ``images`` / ``captions``, when given, override each item's own.

    Raises:
        InputError: On a single item instead of a list, an unknown item type or key, an empty query, an
            empty list, or ``images`` / ``captions`` of another length than ``items``.
    """
    if isinstance(items, (str, InputItem, dict)):
        raise InputError("items must be a list of queries (strings, dicts or InputItem), not a single item")
    out: list[InputItem] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append(InputItem(item))
        elif isinstance(item, InputItem):
            out.append(InputItem(item.text, item.image, item.caption))
        elif isinstance(item, dict):
            unknown = set(item) - {"text", "image", "caption"}
            if "text" not in item or unknown:
                raise InputError(
                    f"item {i} must have a 'text' key and only text/image/caption keys; got {sorted(item)}"
                )
            out.append(InputItem(item["text"], item.get("image"), item.get("caption")))
        else:
            raise InputError(f"item {i} must be a string, dict or InputItem; got {type(item).__name__}")
        if not isinstance(out[-1].text, str) or not out[-1].text.strip():
            raise InputError(f"item {i} has an empty query text")
    if not out:
        raise InputError("items is empty: give at least one query")
    for name, extra in (("images", images), ("captions", captions)):
        if extra is not None and len(extra) != len(out):
            raise InputError(f"{name} has {len(extra)} entries but there are {len(out)} items")
    for i, row in enumerate(out):
        if images is not None:
            row.image = images[i]
        if captions is not None:
            row.caption = captions[i]
    return out


def _user_text(item: InputItem, variant: Variant, index: int) -> str:
    query = item.text.strip()
    if variant is not Variant.CAPTION:
        return query
    if not item.caption or not str(item.caption).strip():
        raise InputError(f"item {index} has no caption, which the caption variant needs")
    return CAPTION_FORMAT.format(caption=str(item.caption).strip(), query=query)


def render_user_turn(bundle: ModelBundle, with_image: bool, add_generation_prompt: bool) -> tuple[str, str]:
    """Render one user turn of ``bundle``'s chat template around :data:`USER_TEXT_SENTINEL`.

    Returns:
        ``(before, after)``: the rendered text before and after the user text.

    Raises:
        InputError: If the template does not place the user text exactly once.
    """
    if bundle.processor is not None:
        parts: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        parts.append({"type": "text", "text": USER_TEXT_SENTINEL})
        conversation = [{"role": "user", "content": parts}]
        rendered = bundle.processor.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    else:
        conversation = [{"role": "user", "content": USER_TEXT_SENTINEL}]
        if getattr(bundle.tokenizer, "chat_template", None):
            rendered = bundle.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        else:
            rendered = USER_TEXT_SENTINEL
    if isinstance(rendered, list):
        rendered = rendered[0]
    if rendered.count(USER_TEXT_SENTINEL) != 1:
        raise InputError(f"the chat template of {bundle.name!r} does not place the user text exactly once")
    before, after = rendered.split(USER_TEXT_SENTINEL)
    return before, after


@dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt and where the user text's pieces lie in it.

    Attributes:
        text: the prompt.
        pieces: ``(user_start, user_end, prompt_start)`` per piece of the user text (one, or two around
            :data:`IMAGE_SLOT`), in user-text and prompt characters.
    """

    text: str
    pieces: tuple[tuple[int, int, int], ...]

    @property
    def spans(self) -> list[tuple[int, int]]:
        """The ``[start, end)`` prompt characters of each user-text piece."""
        return [(ps, ps + ue - us) for us, ue, ps in self.pieces]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The prompt characters of the user-text characters ``[start, end)`` (within one piece)."""
        if start == end:
            return (0, 0)
        for us, ue, ps in self.pieces:
            if us <= start and end <= ue:
                return (ps + start - us, ps + end - us)
        raise InputError(f"user-text span ({start}, {end}) crosses the image")


@dataclass(frozen=True)
class UserTurnLayout:
    """One user turn of a chat template: ``before`` + user text + ``after``; for image turns ``before`` is
    ``head + image + tail`` (the template's image placeholder between the parts the text-only turn shares)."""

    before: str
    after: str
    head: str = ""
    image: str = ""
    tail: str = ""

    def render(self, text: str) -> RenderedPrompt:
        """The prompt of user text ``text``; an :data:`IMAGE_SLOT` in it moves the image there (image turns) or
        is dropped (text turns).

        Raises:
            InputError: more than one :data:`IMAGE_SLOT`.
        """
        count = text.count(IMAGE_SLOT)
        if count > 1:
            raise InputError(f"the query holds {IMAGE_SLOT!r} {count} times; at most once")
        if count == 0:
            return RenderedPrompt(self.before + text + self.after, ((0, len(text), len(self.before)),))
        first, second = text.split(IMAGE_SLOT)
        resume = len(first) + len(IMAGE_SLOT)
        if not self.image:
            prompt = self.before + first + second + self.after
            return RenderedPrompt(prompt, ((0, len(first), len(self.before)),
                                           (resume, len(text), len(self.before) + len(first))))  # fmt: skip
        lead = self.head + first + self.image + self.tail
        pieces = ((0, len(first), len(self.head)), (resume, len(text), len(lead)))
        return RenderedPrompt(lead + second + self.after, pieces)


def user_turn_layout(bundle: ModelBundle, with_image: bool, add_generation_prompt: bool) -> UserTurnLayout:
    """The :class:`UserTurnLayout` of ``bundle``'s template (:func:`render_user_turn`, with and without image).

    Raises:
        InputError: the template does not place the user text exactly once.
    """
    before, after = render_user_turn(bundle, with_image, add_generation_prompt)
    if not with_image:
        return UserTurnLayout(before, after)
    plain, _ = render_user_turn(bundle, False, add_generation_prompt)
    n = 0
    while n < min(len(before), len(plain)) and before[n] == plain[n]:
        n += 1
    m = 0
    while m < min(len(before), len(plain)) - n and before[-1 - m] == plain[-1 - m]:
        m += 1
    return UserTurnLayout(before, after, before[:n], before[n : len(before) - m], before[len(before) - m :])


def text_span_mask(
    offsets: torch.Tensor,
    attention: torch.Tensor,
    spans: list[tuple[int, int]],
    replacements: list[list[dict[str, Any]]] | None,
) -> torch.Tensor:
    """Tokens whose character span overlaps each row's user-text span (in the expanded prompt).

    Args:
        offsets: ``[B, T, 2]`` character offsets of the tokens (``offset_mapping``).
        attention: ``[B, T]`` attention mask; padding is never in the mask.
        spans: Per row, the ``(start, end)`` characters of the user text in the rendered (unexpanded) prompt.
        replacements: Per row, the processor's image-placeholder expansions (``{"span", "replacement"}``)
            that shift later characters, or ``None``.
    """
    mask = torch.zeros_like(attention, dtype=torch.bool)
    for row, (start, end) in enumerate(spans):
        shift = 0
        for rep in replacements[row] if replacements else []:
            s, e = rep["span"]
            if e <= start:
                shift += len(rep["replacement"]) - (e - s)
        lo, hi = start + shift, end + shift
        o_start, o_end = offsets[row, :, 0], offsets[row, :, 1]
        mask[row] = (attention[row] > 0) & (o_end > o_start) & (o_start < hi) & (o_end > lo)
    return mask


def pieces_mask(
    offsets: torch.Tensor,
    attention: torch.Tensor,
    spans: list[list[tuple[int, int]]],
    replacements: list[list[dict[str, Any]]] | None,
) -> torch.Tensor:
    """:func:`text_span_mask` of several spans per row (their union; empty spans mark nothing)."""
    mask = torch.zeros_like(attention, dtype=torch.bool)
    for k in range(max(len(row) for row in spans)):
        part = [row[k] if k < len(row) else (0, 0) for row in spans]
        empty = torch.tensor([s == e for s, e in part], dtype=torch.bool)
        mask |= text_span_mask(offsets, attention, part, replacements) & ~empty.unsqueeze(1)
    return mask


def last_token_mask(attention: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` mask of each row's last attended token (left or right padding)."""
    positions = torch.arange(attention.shape[1]).expand_as(attention)
    last = torch.where(attention > 0, positions, torch.full_like(positions, -1)).max(dim=1).values
    mask = torch.zeros_like(attention, dtype=torch.bool)
    mask[torch.arange(attention.shape[0]), last] = True
    return mask


def build_inputs(
    bundle: ModelBundle,
    items: Sequence[Any],
    variant: Variant | str = "image",
    *,
    images: Sequence[Any] | None = None,
    captions: Sequence[str | None] | None = None,
    seed: int = 0,
    add_generation_prompt: bool = True,
) -> BatchInputs:
    """Build a left-padded batch of prompts for one input variant, with position masks.

    Args:
        bundle: a loaded model.
        items: queries: strings, ``{"text", "image", "caption"}`` dicts or :class:`InputItem`.
        variant: ``image`` (the item's image), ``blank`` (white image of the processor's size), ``mean``
            (the item's image filled with its mean colour), ``noise`` (seeded Gaussian noise, seed
            ``seed + row``), ``text`` (no image) or ``caption`` (:data:`CAPTION_FORMAT`).
        images: images aligned with ``items`` (paths or PIL), overriding the items' own.
        captions: captions aligned with ``items``, overriding the items' own.
        seed: base seed of the noise images.
        add_generation_prompt: end the prompt with the assistant header.

    Returns:
        :class:`BatchInputs` whose ``inputs`` go to ``model(**inputs)`` / ``model.generate(**inputs)``.

    Raises:
        InputError: bad items, a missing image or caption the variant needs, or an image variant on a
            text-only model.
    """
    try:
        variant = Variant(variant)
    except ValueError:
        raise InputError(
            f"unknown variant {variant!r}; known: {', '.join(v.value for v in Variant)}"
        ) from None
    rows = as_input_items(items, images, captions)
    if variant.has_image and not bundle.is_vlm:
        raise InputError(
            f"variant {variant.value!r} needs an image but {bundle.name!r} is a text-only model "
            f"({bundle.family}); use variant 'text' or 'caption'"
        )
    tokenizer = bundle.tokenizer
    tokenizer.padding_side = "left"
    layout = user_turn_layout(bundle, variant.has_image, add_generation_prompt)
    prompts, spans = [], []
    for i, row in enumerate(rows):
        rendered = layout.render(_user_text(row, variant, i))
        prompts.append(rendered.text)
        spans.append(rendered.spans)
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (bos and layout.before.startswith(bos))
    text_kwargs = {"padding": True, "return_tensors": "pt", "return_offsets_mapping": True}
    if variant.has_image:
        pil = [
            make_variant_image(bundle, row.image, variant, seed=seed + i, index=i)
            for i, row in enumerate(rows)
        ]
        family = get_family(bundle.family)
        image_arg: list[Any] = (
            [[im] for im in pil] if family.nested_images or family.name == "gemma3" else pil
        )
        assert bundle.processor is not None  # is_vlm checked above
        enc = bundle.processor(
            text=prompts,
            images=image_arg,
            add_special_tokens=add_special,
            return_text_replacement_offsets=True,
            **text_kwargs,
        )
    else:
        enc = tokenizer(prompts, add_special_tokens=add_special, **text_kwargs)
    data = dict(enc)
    offsets = torch.as_tensor(np.asarray(data.pop("offset_mapping")))
    replacements = data.pop("text_replacement_offsets", None)
    if variant.has_image and replacements is None:
        raise InputError(
            "this transformers version does not report placeholder expansions "
            "(return_text_replacement_offsets); upgrade transformers to >= 5.23"
        )
    attention = data["attention_mask"]
    input_ids = data["input_ids"]
    if bundle.image_token_id is not None:
        image_mask = input_ids == bundle.image_token_id
    else:
        image_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    masks = PositionMasks(
        attention=attention.bool(),
        image=image_mask,
        text=pieces_mask(offsets, attention, spans, replacements),
        last=last_token_mask(attention),
    )
    return BatchInputs(inputs=data, masks=masks, variant=variant, prompts=prompts)
