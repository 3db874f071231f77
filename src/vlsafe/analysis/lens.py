"""Safety-layer localisation with the logit lens (design §5.3).

At the last prompt token of every layer ``j``: ``P_j = softmax(lm_head(final_norm(h_j)))``. Refusal tokens
are the first tokens of refusal openings ("Sorry", "I", "cannot", "I'm sorry", "As an AI", ...), with and
without a leading space, derived from the model's tokenizer. Per query, the *safety activation layer* is
the first ``j >= 1`` where a refusal token enters the top-k of the layer-to-layer change ``P_j - P_{j-1}``
and the *end layer* the first ``j`` where a refusal token is the top-1 token of ``P_j``. Layer 0 has no
previous layer, so it can never be the activation layer (comparing ``P_0`` with zeros would make any
refusal token already in the top-k of ``P_0`` "activate" at layer 0, and on a real model the frequent
token "I" always is; that made the activation layer 0 for every query). Statistics are running sums per
variant, so memory does not grow with the number of queries. With images and captions, the per-layer
cosine between the image-span mean state and the mean state of the caption alone (as text) is measured too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe.analysis.items import as_items, batched
from vlsafe.core.errors import ConfigError, InputError, ModelLoadError
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.models import ModelBundle, Variant

logger = logging.getLogger(__name__)

#: Openings of refusals; their first tokens (with and without a leading space) are the refusal tokens.
REFUSAL_PHRASES: tuple[str, ...] = (
    "Sorry",
    "I",
    "cannot",
    "I'm sorry",
    "I am sorry",
    "I cannot",
    "I can't",
    "As an AI",
    "Unfortunately",
    "I apologize",
    "No",
)

LENS_STATS = ("mass", "topk", "top1", "delta_topk", "rank")


def refusal_token_ids(tokenizer: Any, phrases: Sequence[str] = REFUSAL_PHRASES) -> dict[int, str]:
    """Token id -> token text of the first token of each phrase, with and without a leading space.

    A first token is kept when its text (spaces stripped) is the phrase's first word or a prefix of it
    of at least two characters; bare space pieces and lone letters of longer words are skipped.
    """
    out: dict[int, str] = {}
    for phrase in phrases:
        for text in (phrase, " " + phrase):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if not ids:
                continue
            piece = tokenizer.decode([ids[0]])
            word = phrase.split()[0]
            stripped = piece.strip()
            # keep whole-word pieces and word prefixes of 2+ characters (not a lone letter of "Sorry")
            if stripped and word.startswith(stripped) and len(stripped) >= min(2, len(word)):
                out.setdefault(int(ids[0]), piece)
    if not out:
        raise InputError("no refusal token could be derived from the tokenizer for the given phrases")
    return out


def _final_norm(bundle: ModelBundle) -> torch.nn.Module:
    model: Any = bundle.model
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    for owner in (decoder, getattr(model, "model", None)):
        for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
            mod = getattr(owner, name, None)
            if isinstance(mod, torch.nn.Module):
                return mod
    raise ModelLoadError(f"cannot find the final norm of {type(bundle.model).__name__} for the logit lens")


def lens_probabilities(bundle: ModelBundle, hidden: torch.Tensor) -> torch.Tensor:
    """``softmax(lm_head(final_norm(hidden)))`` in float32 for states ``[..., H]`` (final soft-capping applied)."""
    model: Any = bundle.model
    head = model.get_output_embeddings()
    if head is None:
        raise ModelLoadError(
            f"{type(bundle.model).__name__} has no output embeddings (lm_head) for the logit lens"
        )
    norm = _final_norm(bundle)
    with torch.inference_mode():
        logits = head(norm(hidden.to(device=bundle.device, dtype=bundle.dtype))).float()
    cap = getattr(bundle.text_config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.softmax(logits, dim=-1).cpu()


def logit_lens(bundle: ModelBundle, batch: Any) -> torch.Tensor:
    """Logit-lens distributions ``[L, B, V]`` at the last prompt token of every layer for one batch."""
    layers = list(range(bundle.num_layers))
    states, _ = forward_states(bundle, batch, layers, ["last"])
    return torch.stack([lens_probabilities(bundle, states["last"][j]) for j in layers])


@dataclass
class LensResult:
    """Running logit-lens statistics per variant.

    Attributes:
        variants: analysed variants.
        num_layers: decoder layers (all are analysed).
        top_k: k of the activation criterion.
        refusal_tokens: token id -> text.
        count: queries per variant.
        sums: ``"{stat}.{variant}"`` -> ``[L]`` sums over queries (``mass``: refusal probability mass,
            ``topk``/``top1``: a refusal token in the top-k / top-1 of ``P_j``, ``delta_topk``: in the top-k
            of ``P_j - P_{j-1}`` (always 0 at layer 0, which has no previous layer), ``rank``: best refusal-token rank, 0 = top-1), and ``"activation.{v}"`` /
            ``"end.{v}"`` -> ``[L + 1]`` histograms (last bin: never; the activation histogram's bin 0
            stays empty, the search starts at layer 1).
        caption_cosine: ``[L]`` sum of image-span vs caption-text cosines (empty when not measured).
        caption_count: queries behind ``caption_cosine``.
        meta: provenance.
    """

    variants: list[str]
    num_layers: int
    top_k: int
    refusal_tokens: dict[int, str]
    count: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    caption_cosine: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    caption_count: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def mean(self, stat: str, variant: str) -> torch.Tensor:
        key = f"{stat}.{variant}"
        if key not in self.sums:
            raise InputError(f"no statistic {key!r}; variants {self.variants}")
        return self.sums[key] / max(self.count, 1)

    def layer_summary(self, variant: str, which: str = "activation") -> dict[str, Any]:
        """Mode and mean of the activation (or end) layer over queries that reach one, and the share that do."""
        hist = self.sums[f"{which}.{variant}"]
        reached = hist[:-1]
        total = float(reached.sum())
        if total == 0:
            return {"mode": None, "mean": None, "share": 0.0}
        layers = torch.arange(self.num_layers, dtype=torch.float64)
        return {
            "mode": int(reached.argmax()),
            "mean": float((reached * layers).sum() / total),
            "share": total / max(self.count, 1),
        }

    def safety_layers(self, variant: str) -> list[int] | None:
        """The safety layers of ``variant``: the activation layer (mode) through the end layer (mode), the
        activation layer alone when no query reached an end layer; ``None`` when none reached activation."""
        act = self.layer_summary(variant, "activation")["mode"]
        end = self.layer_summary(variant, "end")["mode"]
        if act is None:
            return None
        return list(range(act, max(act, end if end is not None else act) + 1))

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for v in self.variants:
            act, end = self.layer_summary(v, "activation"), self.layer_summary(v, "end")
            out.append(
                {
                    "variant": v,
                    "activation layer (mode)": act["mode"],
                    "activation layer (mean)": act["mean"],
                    "activated share": act["share"],
                    "end layer (mode)": end["mode"],
                    "end share": end["share"],
                    "refusal mass, last layer": float(self.mean("mass", v)[-1]),
                }
            )
        return out


def lens_update(result: LensResult, variant: str, probs: torch.Tensor, refusal: torch.Tensor) -> None:
    """Fold ``probs [L, B, V]`` of one batch into ``result``'s sums for ``variant``.

    The activation criterion (a refusal token in the top-k of ``P_j - P_{j-1}``) is evaluated from
    ``j = 1`` on: layer 0 has no previous layer to change from.
    """
    n_layers, batch, _ = probs.shape
    k = min(result.top_k, probs.shape[-1])
    s = result.sums
    is_ref = torch.zeros(probs.shape[-1], dtype=torch.bool)
    is_ref[refusal] = True
    prev: torch.Tensor | None = None
    activation = torch.full((batch,), n_layers)
    end = torch.full((batch,), n_layers)
    for j in range(n_layers):
        p = probs[j]
        ref_p = p[:, refusal]
        best = ref_p.max(dim=-1).values
        rank = (p > best[:, None]).sum(dim=-1)
        top = p.topk(k, dim=-1).indices
        in_top = is_ref[top].any(dim=-1)
        if prev is None:  # layer 0: no layer-to-layer change
            in_delta = torch.zeros(batch, dtype=torch.bool)
        else:
            in_delta = is_ref[(p - prev).topk(k, dim=-1).indices].any(dim=-1)
        top1 = is_ref[p.argmax(dim=-1)]
        s[f"mass.{variant}"][j] += float(ref_p.sum())
        s[f"rank.{variant}"][j] += float(rank.sum())
        s[f"topk.{variant}"][j] += float(in_top.sum())
        s[f"top1.{variant}"][j] += float(top1.sum())
        s[f"delta_topk.{variant}"][j] += float(in_delta.sum())
        activation = torch.where(
            (activation == n_layers) & in_delta, torch.full_like(activation, j), activation
        )
        end = torch.where((end == n_layers) & top1, torch.full_like(end, j), end)
        prev = p
    s[f"activation.{variant}"] += torch.bincount(activation, minlength=n_layers + 1).double()
    s[f"end.{variant}"] += torch.bincount(end, minlength=n_layers + 1).double()


def compute_layers(
    bundle: ModelBundle,
    items: Sequence[Any],
    variants: Sequence[str] | None = None,
    *,
    top_k: int = 10,
    refusal_phrases: Sequence[str] = REFUSAL_PHRASES,
    caption_cosine: bool = True,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> LensResult:
    """Logit-lens safety-layer localisation of ``items`` under several variants.

    Args:
        bundle: the model (needs an output embedding and a final norm).
        items: queries (harmful ones, typically), with images/captions for image and caption variants.
        variants: default ``text`` plus ``image`` when every item has an image (and ``caption`` when every
            item has a caption): the same content given as text and as image.
        top_k: a refusal token must enter the top-k of ``P_j - P_{j-1}`` (``j >= 1``) for the activation
            layer.
        refusal_phrases: phrases whose first tokens are the refusal tokens.
        caption_cosine: also measure image-span vs caption-text cosines (VLM, image and caption on every item).
        batch_size, seed, progress: batching, noise seed, progress bar.
    """
    if top_k < 1:
        raise ConfigError(f"top_k={top_k} must be >= 1")
    rows = as_items(items)
    with_images = bundle.is_vlm and all(r.image is not None for r in rows)
    with_captions = all(r.caption for r in rows)
    if variants is None:
        variants = ["text"] + (["caption"] if with_captions else []) + (["image"] if with_images else [])
    names = list(dict.fromkeys(Variant(v).value for v in variants))
    tokens = refusal_token_ids(bundle.tokenizer, refusal_phrases)
    refusal = torch.tensor(sorted(tokens))
    n_layers = bundle.num_layers
    result = LensResult(names, n_layers, top_k, tokens, meta={"model": bundle.name, "family": bundle.family})
    for v in names:
        for stat in LENS_STATS:
            result.sums[f"{stat}.{v}"] = torch.zeros(n_layers, dtype=torch.float64)
        for which in ("activation", "end"):
            result.sums[f"{which}.{v}"] = torch.zeros(n_layers + 1, dtype=torch.float64)
    do_cos = caption_cosine and with_images and with_captions
    if do_cos:
        result.caption_cosine = torch.zeros(n_layers, dtype=torch.float64)
    layers = list(range(n_layers))
    total = math.ceil(len(rows) / batch_size)
    for b, chunk in enumerate(
        tqdm(batched(rows, batch_size), total=total, desc="logit lens", disable=not progress)
    ):
        for v in names:
            positions = ["last", "image_mean"] if (do_cos and v == "image") else ["last"]
            batch = build_variant(bundle, chunk, v, seed=seed + b * batch_size)
            states, _ = forward_states(bundle, batch, layers, positions)
            probs = torch.stack([lens_probabilities(bundle, states["last"][j]) for j in layers])
            lens_update(result, v, probs, refusal)
            if "image_mean" in states:
                captions = [str(r.caption) for r in chunk]
                cap_states, _ = forward_states(
                    bundle, build_variant(bundle, captions, "text"), layers, ["text_mean"]
                )
                for j in layers:
                    cos = torch.nn.functional.cosine_similarity(
                        states["image_mean"][j].double(), cap_states["text_mean"][j].double(), dim=-1
                    )
                    result.caption_cosine[j] += float(cos.sum())
                result.caption_count += len(chunk)
        result.count += len(chunk)
    if do_cos is False and caption_cosine and "image" in names:
        logger.info("image/caption cosine skipped: it needs an image and a caption on every item")
    return result


def lens_to_data(result: LensResult) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    data = {
        "variants": result.variants,
        "num_layers": result.num_layers,
        "top_k": result.top_k,
        "refusal_tokens": {str(k): v for k, v in result.refusal_tokens.items()},
        "count": result.count,
        "caption_count": result.caption_count,
        "meta": result.meta,
    }
    tensors = {f"sum.{k}": v for k, v in result.sums.items()}
    if result.caption_count:
        tensors["caption_cosine"] = result.caption_cosine
    return data, tensors


def lens_from_data(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> LensResult:
    return LensResult(
        variants=list(data["variants"]),
        num_layers=int(data["num_layers"]),
        top_k=int(data["top_k"]),
        refusal_tokens={int(k): v for k, v in data["refusal_tokens"].items()},
        count=int(data["count"]),
        sums={k[4:]: v for k, v in tensors.items() if k.startswith("sum.")},
        caption_cosine=tensors.get("caption_cosine", torch.zeros(0, dtype=torch.float64)),
        caption_count=int(data.get("caption_count", 0)),
        meta=dict(data.get("meta", {})),
    )
