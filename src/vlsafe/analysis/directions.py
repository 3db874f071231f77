"""Refusal directions per layer (difference of means) and linear-probe accuracy on a held-out split.

Harmful and harmless text prompts are run through the model; the last-prompt-token states of each layer
give the direction ``mean(harmful) - mean(harmless)`` and train a logistic-regression probe (torch,
seeded, standardised features) whose accuracy is measured on held-out prompts. The difference-of-means
classifier (threshold halfway between the two projected class means) is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe.analysis.items import as_items, batched
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, resolve_layers
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.models import ModelBundle


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random split of ``range(n)`` into (train, test); both non-empty when ``n >= 2``."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
    if n < 2:
        raise InputError(f"a train/test split needs at least 2 prompts per class, got {n}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 0.1,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit a logistic-regression probe on ``x [N, H]`` with labels ``y [N]`` (0/1), full-batch Adam.

    Features are standardised with the training mean and std. Returns ``(weight [H], bias [], mean [H],
    std [H])``; predict with :func:`probe_predict`.
    """
    x = x.detach().to(torch.float32)
    y = y.detach().to(torch.float32)
    mean, std = x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    weight = (0.01 * torch.randn(x.shape[1], generator=gen)).requires_grad_(True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            logits = z @ weight + bias
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss = loss + weight_decay * weight.square().sum()
            loss.backward()
            opt.step()
    return weight.detach(), bias.detach(), mean, std


def probe_predict(probe: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """0/1 predictions of a probe from :func:`fit_probe`."""
    weight, bias, mean, std = probe
    return (((x.float() - mean) / std) @ weight + bias > 0).long()


def direction_accuracy(
    direction: torch.Tensor,
    x_pos: torch.Tensor,
    x_neg: torch.Tensor,
    test_pos: torch.Tensor,
    test_neg: torch.Tensor,
) -> float:
    """Accuracy on (test_pos, test_neg) of thresholding the projection on ``direction`` at the midpoint
    of the training class means (``x_pos``, ``x_neg``)."""
    d = direction.float()
    mid = 0.5 * (float(x_pos.float().mean(0) @ d) + float(x_neg.float().mean(0) @ d))
    correct = int(((test_pos.float() @ d) > mid).sum()) + int(((test_neg.float() @ d) <= mid).sum())
    return correct / (len(test_pos) + len(test_neg))


@dataclass
class DirectionResult:
    """Per-layer refusal directions and probe accuracies.

    Attributes:
        layers: analysed layers.
        directions: layer -> ``mean(harmful) - mean(harmless)`` (unnormalised, from the training split).
        probe_accuracy: layer -> held-out accuracy of the logistic probe.
        mean_diff_accuracy: layer -> held-out accuracy of the difference-of-means classifier.
        harmful_projection / harmless_projection: layer -> mean projection on the unit direction (test split).
        counts: numbers of prompts (harmful/harmless, train/test).
        meta: provenance.
    """

    layers: list[int]
    directions: dict[int, torch.Tensor]
    probe_accuracy: dict[int, float]
    mean_diff_accuracy: dict[int, float]
    harmful_projection: dict[int, float]
    harmless_projection: dict[int, float]
    counts: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def steering_vector(self) -> SteeringVector:
        """The directions as a :class:`vlsafe.hooks.SteeringVector` (unnormalised)."""
        return SteeringVector(dict(self.directions), meta={"kind": "refusal_direction", **self.meta})

    def rows(self) -> list[dict[str, Any]]:
        return [
            {
                "layer": layer,
                "probe acc.": self.probe_accuracy[layer],
                "mean-diff acc.": self.mean_diff_accuracy[layer],
                "|direction|": float(self.directions[layer].norm()),
                "proj. harmful": self.harmful_projection[layer],
                "proj. harmless": self.harmless_projection[layer],
            }
            for layer in self.layers
        ]


def directions_from_states(
    harmful: dict[int, torch.Tensor],
    harmless: dict[int, torch.Tensor],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    probe_steps: int = 300,
) -> DirectionResult:
    """Directions and probe accuracies from per-layer last-token states ``[N_harmful, H]`` / ``[N_harmless, H]``."""
    layers = sorted(harmful)
    if sorted(harmless) != layers:
        raise InputError(
            f"harmful and harmless states cover different layers: {layers} vs {sorted(harmless)}"
        )
    n_pos, n_neg = len(harmful[layers[0]]), len(harmless[layers[0]])
    tr_p, te_p = split_indices(n_pos, test_fraction, seed)
    tr_n, te_n = split_indices(n_neg, test_fraction, seed + 1)
    dirs, probe_acc, md_acc, proj_h, proj_l = {}, {}, {}, {}, {}
    for layer in layers:
        xp, xn = harmful[layer].float(), harmless[layer].float()
        d = xp[tr_p].mean(0) - xn[tr_n].mean(0)
        dirs[layer] = d
        x = torch.cat([xp[tr_p], xn[tr_n]])
        y = torch.cat([torch.ones(len(tr_p)), torch.zeros(len(tr_n))])
        probe = fit_probe(x, y, steps=probe_steps, seed=seed)
        correct = int(probe_predict(probe, xp[te_p]).sum()) + int((probe_predict(probe, xn[te_n]) == 0).sum())
        probe_acc[layer] = correct / (len(te_p) + len(te_n))
        md_acc[layer] = direction_accuracy(d, xp[tr_p], xn[tr_n], xp[te_p], xn[te_n])
        unit = d / d.norm().clamp_min(1e-12)
        proj_h[layer] = float((xp[te_p] @ unit).mean())
        proj_l[layer] = float((xn[te_n] @ unit).mean())
    counts = {
        "harmful_train": len(tr_p),
        "harmful_test": len(te_p),
        "harmless_train": len(tr_n),
        "harmless_test": len(te_n),
    }
    meta = {"test_fraction": test_fraction, "seed": seed, "probe_steps": probe_steps}
    return DirectionResult(layers, dirs, probe_acc, md_acc, proj_h, proj_l, counts, meta)


def last_token_states(
    bundle: ModelBundle,
    prompts: Sequence[Any],
    layers: Sequence[int],
    *,
    batch_size: int = 8,
    desc: str = "states",
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """Last-prompt-token states ``[N, H]`` per layer of text prompts (text variant)."""
    rows = as_items(prompts)
    chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    total = math.ceil(len(rows) / batch_size)
    for chunk in tqdm(batched(rows, batch_size), total=total, desc=desc, disable=not progress):
        states, _ = forward_states(bundle, build_variant(bundle, chunk, "text"), layers, ["last"])
        for layer in layers:
            chunks[layer].append(states["last"][layer].float())
    return {layer: torch.cat(v) for layer, v in chunks.items()}


def compute_directions(
    bundle: ModelBundle,
    harmful: Sequence[Any],
    harmless: Sequence[Any],
    *,
    layers: int | Sequence[int] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    probe_steps: int = 300,
    batch_size: int = 8,
    progress: bool = True,
) -> DirectionResult:
    """Refusal direction and probe accuracy per layer from harmful vs harmless text prompts.

    Args:
        bundle: the model.
        harmful, harmless: prompts (strings or items; only the text is used, text-only variant).
        layers: decoder layers (default all).
        test_fraction: share of each class held out for the accuracies.
        seed: split and probe initialisation seed.
        probe_steps: full-batch Adam steps of the logistic probe.
    """
    chosen = resolve_layers(bundle, layers)
    pos = last_token_states(bundle, harmful, chosen, batch_size=batch_size, desc="harmful", progress=progress)
    neg = last_token_states(
        bundle, harmless, chosen, batch_size=batch_size, desc="harmless", progress=progress
    )
    result = directions_from_states(pos, neg, test_fraction=test_fraction, seed=seed, probe_steps=probe_steps)
    result.meta.update({"model": bundle.name, "family": bundle.family})
    return result


def directions_to_data(result: DirectionResult) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    data = {
        "layers": result.layers,
        "probe_accuracy": {str(k): v for k, v in result.probe_accuracy.items()},
        "mean_diff_accuracy": {str(k): v for k, v in result.mean_diff_accuracy.items()},
        "harmful_projection": {str(k): v for k, v in result.harmful_projection.items()},
        "harmless_projection": {str(k): v for k, v in result.harmless_projection.items()},
        "counts": result.counts,
        "meta": result.meta,
    }
    return data, {f"direction.{k}": v.float() for k, v in result.directions.items()}


def directions_from_data(data: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DirectionResult:
    layers = [int(x) for x in data["layers"]]

    def per_layer(key: str) -> dict[int, float]:
        return {int(k): float(v) for k, v in data[key].items()}

    return DirectionResult(
        layers=layers,
        directions={layer: tensors[f"direction.{layer}"] for layer in layers},
        probe_accuracy=per_layer("probe_accuracy"),
        mean_diff_accuracy=per_layer("mean_diff_accuracy"),
        harmful_projection=per_layer("harmful_projection"),
        harmless_projection=per_layer("harmless_projection"),
        counts=dict(data.get("counts", {})),
        meta=dict(data.get("meta", {})),
    )
