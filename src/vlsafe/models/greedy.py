"""Greedy decoding of a left-padded batch whose prompts share a prefix, computing that prefix once.

Safety evaluations send many prompts through one chat template: every prompt opens with the same system turn, and
image settings such as a blank image repeat the same image as well. :func:`greedy_shared_prefix` runs the
longest prefix that all prompts of a batch share (token ids, and the pixels when the prefix holds the image)
once (at batch size 1, or once per distinct image when the prefix holds the image: a harmful and a benign
request sent with the same image share it), repeats its KV cache over the batch, and then runs only the rest
of each prompt (padded between the prefix and the rest, with positions counted over real tokens, as
``generate`` counts them for left padding). The replies equal those of ``model.generate(do_sample=False)`` up
to floating-point rounding (:func:`shared_prefix_supported` names the models it handles;
``tests/unit/test_models_greedy.py`` is the oracle test).

Only for models whose image features depend on nothing but the image (LLaVA-style wiring, or text-only
decoders): models with multimodal rotary positions (Qwen2-VL) or image splitting are not supported. Not for runs
with forward hooks that act on "the last position" of a forward call (steering): the prefix pass is a forward
call of its own.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache

from vlsafe.models.families import family_for_model_type

#: model types whose forward accepts a cache and image tokens anywhere in the current chunk
SUPPORTED_MODEL_TYPES = frozenset({"llava", "llama", "mistral", "qwen2", "gemma", "gemma2", "phi3"})


def shared_prefix_supported(model: Any) -> bool:
    """Whether :func:`greedy_shared_prefix` handles ``model`` (by ``config.model_type``)."""
    return getattr(getattr(model, "config", None), "model_type", None) in SUPPORTED_MODEL_TYPES


def _cache_kwarg(model: Any) -> str:
    """The forward's name for the KV cache (``cache`` in newer transformers, ``past_key_values`` before)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def common_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> int:
    """Length of the longest token prefix shared by all rows of a left-padded batch (real tokens only),
    leaving at least one token of the shortest row outside it."""
    lengths = attention_mask.sum(dim=1)
    width = input_ids.shape[1]
    rows = [input_ids[i, width - int(n) :] for i, n in enumerate(lengths)]
    limit = int(lengths.min()) - 1
    first = rows[0]
    n = 0
    while n < limit and all(int(r[n]) == int(first[n]) for r in rows[1:]):
        n += 1
    return n


@torch.no_grad()
def greedy_shared_prefix(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    pad_token_id: int,
    pixel_values: torch.Tensor | None = None,
    output_scores: bool = False,
) -> Any:
    """Greedy continuation of a left-padded batch; returns the new tokens ``(batch, <= max_new_tokens)``.

    Rows stop at an end-of-sequence token and are filled with ``pad_token_id`` afterwards; decoding stops
    when every row has stopped, as in ``generate``. With ``output_scores``, returns ``(tokens, scores)``:
    the next-token logits of every step (as ``generate(output_scores=True)`` gives them).
    """

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    batch, width = input_ids.shape
    family = family_for_model_type(model.config.model_type, allow_any_causal_lm=True)
    image_id = family.image_token_id(model.config)
    n = common_prefix_length(input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1)
    first_row = input_ids[0, width - int(lengths[0]) :]
    is_image = torch.zeros_like(first_row, dtype=torch.bool) if image_id is None else first_row == image_id
    # which prefix each row continues: one shared prefix, or one per distinct image when the prefix holds it
    groups = torch.zeros(batch, dtype=torch.long, device=input_ids.device)
    prefix_pixels = None
    if bool(is_image[:n].any()):
        distinct = None
        if pixel_values is not None and not bool(is_image[n:].any()):
            distinct, inverse = torch.unique(pixel_values.flatten(1), dim=0, return_inverse=True)
        if distinct is not None and pixel_values is not None and len(distinct) < batch:
            groups = inverse
            prefix_pixels = distinct.view(-1, *pixel_values.shape[1:])
        else:  # every row has its own image: share only what comes before the image
            n = int(is_image.nonzero()[0, 0])
    prefix = first_row[:n]
    cache_key = _cache_kwarg(model)
    cache = DynamicCache()
    if n > 0:
        rows = 1 if prefix_pixels is None else len(prefix_pixels)
        image = {} if prefix_pixels is None else {"pixel_values": prefix_pixels}
        model(input_ids=prefix[None].expand(rows, n), use_cache=True, logits_to_keep=1, **{cache_key: cache},
              **image)  # fmt: skip
        cache.batch_select_indices(groups)
    # the rest of every prompt, left-padded, after the shared prefix
    rest_len = lengths - n
    s = int(rest_len.max())
    rest_ids = input_ids.new_full((batch, s), pad_token_id)
    rest_mask = attention_mask.new_zeros((batch, s))
    for i in range(batch):
        k = int(rest_len[i])
        rest_ids[i, s - k :] = input_ids[i, width - k :]
        rest_mask[i, s - k :] = 1
    mask = torch.cat([attention_mask.new_ones((batch, n)), rest_mask], dim=1)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    extra: dict[str, Any] = {}
    if pixel_values is not None and prefix_pixels is None:
        extra["pixel_values"] = pixel_values
    out = model(
        input_ids=rest_ids, attention_mask=mask, position_ids=positions[:, n:], use_cache=True,
        logits_to_keep=1, **{cache_key: cache}, **extra,
    )  # fmt: skip
    eos = torch.tensor(
        [] if eos_token_id is None else ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id),
        device=input_ids.device,
    )
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    new_tokens, scores = [], []
    last_pos = positions[:, -1]
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        scores.append(logits)
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_token_id))
        new_tokens.append(nxt)
        unfinished &= ~torch.isin(nxt, eos)
        if step == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        mask = torch.cat([mask, mask.new_ones((batch, 1))], dim=1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None], use_cache=True,
            **{cache_key: cache},
        )  # fmt: skip
    tokens = torch.stack(new_tokens, dim=1)
    return (tokens, scores) if output_scores else tokens
