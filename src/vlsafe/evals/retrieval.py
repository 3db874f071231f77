"""Inference with retrieval: the TGA prompt at generation time, for direct use and for evaluation samples.

Every helper writes the first user turn with :func:`vlsafe.data.retrieval.retrieval_prompt`, the function the
training encoder uses, and renders it with :func:`vlsafe.models.build_inputs`, so training and inference prompts
are the same tokens (``order="text_first"``: ``"Retrieved Text: {r}. <image>\\n{q}"`` on LLaVA, as released).
A retriever that retrieves by image (:class:`vlsafe.data.retrieval.ImageRetriever`, e.g. ``clip``) is queried
with each prompt's image; prompts without an image query it by text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.retrieval import ImageRetriever, Retriever, check_order, retrieval_prompt
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import build_inputs
from vlsafe.models.inputs_types import BatchInputs

#: What a retriever is queried with: the prompt text, the sample's caption, or the image shown.
QUERIES = ("text", "caption", "image")


def retriever_fingerprint(retriever: Any) -> str:
    """A stable text identifying ``retriever`` for a run's fingerprint: its ``fingerprint`` string when it has one
    (:class:`~vlsafe.data.retrieval.CLIPRetriever`: model and corpus), else its class's qualified name with its
    ``digest()`` when it has one (:meth:`vlsafe.data.retrieval.EmbeddingIndex.digest`: keys and texts)."""
    explicit = getattr(retriever, "fingerprint", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    kind = type(retriever)
    name = f"{kind.__module__}.{kind.__qualname__}"
    digest = getattr(retriever, "digest", None)
    return f"{name}:{digest()}" if callable(digest) else name


def retrieve_one(retriever: Any, text: str, image: Any = None) -> str | None:
    """The top-1 text for one prompt: by ``image`` when given and the retriever retrieves by image, else by
    ``text``."""
    if image is not None and isinstance(retriever, ImageRetriever):
        hits = retriever.retrieve_image(image, k=1)
    else:
        hits = retriever.retrieve(text, k=1)
    return next(iter(hits), None)


def _retrieve_all(
    queries: Sequence[str],
    retriever: Retriever | None,
    retrieved: Sequence[str | None] | None,
    images: Sequence[Any] | None = None,
) -> list[str | None]:
    if retrieved is not None:
        if len(retrieved) != len(queries):
            raise InputError(f"{len(retrieved)} retrieved texts for {len(queries)} instructions")
        return list(retrieved)
    if retriever is None:
        raise InputError("give either a retriever or the retrieved texts")
    shown = list(images) if images is not None else [None] * len(queries)
    return [retrieve_one(retriever, q, im) for q, im in zip(queries, shown, strict=True)]


def build_retrieval_inputs(
    bundle: ModelBundle,
    instructions: Sequence[str],
    images: Sequence[Any] | None,
    retriever: Retriever | None = None,
    retrieved: Sequence[str | None] | None = None,
    queries: Sequence[str] | None = None,
    order: str = "text_first",
) -> BatchInputs:
    """:func:`vlsafe.models.build_inputs` for TGA retrieval prompts (:func:`retrieval_prompt`).

    Args:
        bundle: the model.
        instructions: the user instructions.
        images: one image per instruction (``None``: text-only prompts).
        retriever: used when ``retrieved`` is not given; queried with the images when it retrieves by image,
            else with ``queries`` (default: the instructions).
        retrieved: precomputed retrieved texts.
        queries: text retrieval queries aligned with ``instructions``.
        order: ``text_first`` (retrieved text, image, instruction) or ``image_first``.
    """
    check_order(order)
    found = _retrieve_all(list(queries or instructions), retriever, retrieved, images)
    texts = [retrieval_prompt(i, r, order) for i, r in zip(instructions, found, strict=True)]
    variant = "image" if images is not None else "text"
    return build_inputs(bundle, texts, variant, images=images)


@torch.inference_mode()
def generate_with_retrieval(
    bundle: ModelBundle,
    instructions: Sequence[str],
    images: Sequence[Any] | None = None,
    retriever: Retriever | None = None,
    retrieved: Sequence[str | None] | None = None,
    max_new_tokens: int = 64,
    order: str = "text_first",
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy (by default) generation with retrieval prompts; returns the decoded replies."""
    batch = build_retrieval_inputs(bundle, instructions, images, retriever, retrieved, order=order).to(bundle.device)
    kwargs = {"do_sample": False, **generate_kwargs}
    out = bundle.model.generate(**batch.inputs, max_new_tokens=max_new_tokens, **kwargs)  # type: ignore[operator]
    new = out[:, batch.input_ids.shape[1] :]
    return [bundle.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def with_retrieval(
    samples: Sequence[Any],
    retriever: Retriever,
    query: str = "text",
    order: str = "text_first",
    images: Sequence[Any] | None = None,
) -> list[Any]:
    """Copies of evaluation :class:`vlsafe.evals.Sample` objects whose ``text`` is the retrieval prompt
    (``metadata["retrieved"]`` keeps the retrieved text, ``metadata["instruction"]`` the original text).

    Args:
        samples: the samples.
        retriever: the retriever.
        query: ``text``, ``caption`` (the sample's caption, else its text) or ``image`` (``images[i]``, the
            image the sample is shown, for a retriever that retrieves by image; samples shown no image are
            queried by text).
        order: ``text_first`` or ``image_first``.
        images: the image each sample is shown (``None`` where none), for ``query="image"``.

    Raises:
        ConfigError: an unknown query or order, or ``image`` with a retriever that does not retrieve by image.
        InputError: ``images`` of another length than ``samples``.
    """
    check_order(order)
    if query not in QUERIES:
        raise ConfigError(f"retrieval query {query!r} is unknown; it must be one of {', '.join(QUERIES)}")
    if query == "image" and not isinstance(retriever, ImageRetriever):
        raise ConfigError(f"retrieval query 'image' needs a retriever that retrieves by image; "
                          f"{type(retriever).__name__} does not (use clip)")  # fmt: skip
    if images is not None and len(images) != len(samples):
        raise InputError(f"{len(images)} images for {len(samples)} samples")
    out = []
    for i, s in enumerate(samples):
        q = s.caption if query == "caption" and s.caption else s.text
        image = images[i] if query == "image" and images is not None else None
        r = retrieve_one(retriever, q, image)
        meta = {**s.metadata, "retrieved": r, "instruction": s.text}
        out.append(s.model_copy(update={"text": retrieval_prompt(s.text, r, order), "metadata": meta}))
    return out
