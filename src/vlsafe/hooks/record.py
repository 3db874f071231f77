"""Record decoder-layer hidden states with forward hooks.

``record_hidden_states`` is a context manager: hooks exist only inside it. Each forward call of
the model adds the selected positions of every chosen layer to the recorder, either kept (one
vector per sample) or folded into a running mean so that thousands of samples fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.hooks.plumbing import CallContext, hidden_from_output, outer_pre_hook, registered
from vlsafe.hooks.states import HiddenStates
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs_types import BatchInputs, PositionMasks

Positions = Literal["last", "all", "text_mean", "image_mean", "mean"]
POSITIONS = ("last", "all", "text_mean", "image_mean", "mean")
REDUCES = ("none", "mean")


def resolve_layers(bundle: ModelBundle, layers: int | Sequence[int] | None) -> list[int]:
    """Normalise a layer selection (None = all layers) and check every index."""
    if layers is None:
        return list(range(bundle.num_layers))
    if isinstance(layers, int):
        layers = [layers]
    out = sorted({bundle.check_layer(int(i)) for i in layers})
    if not out:
        raise ConfigError("layer selection is empty: give at least one layer index")
    return out


class Recorder:
    """Collects hidden states while its context is open; see ``record_hidden_states``.

    Set ``masks`` to the batch's ``PositionMasks`` (or call ``set_batch``) before each forward
    pass when positions depend on the batch (``text_mean``, ``image_mean``). ``last`` and ``mean``
    work without masks on left-padded inputs (they use the attention mask of the call).
    """

    def __init__(
        self,
        layers: list[int],
        positions: Positions | torch.Tensor,
        reduce: str,
        dtype: torch.dtype,
        device: str,
    ) -> None:
        self.layers = layers
        self.positions = positions
        self.reduce = reduce
        self.dtype = dtype
        self.device = device
        self.masks: PositionMasks | None = None
        self.prefill_only = True
        self._chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        self._sums: dict[int, torch.Tensor] = {}
        self._counts: dict[int, int] = {layer: 0 for layer in layers}
        self.ctx = CallContext()

    def set_batch(self, batch: BatchInputs) -> None:
        """Use ``batch``'s position masks for the next forward call(s)."""
        self.masks = batch.masks

    # -- selection -------------------------------------------------------------------------
    def _select(self, hidden: torch.Tensor) -> torch.Tensor | None:
        pos = self.positions
        real = self.ctx.token_mask(hidden)
        if isinstance(pos, torch.Tensor):
            return _masked_mean(hidden, pos.to(hidden.device).bool())
        if pos == "all":
            return hidden
        if pos == "last":
            if self.masks is not None and self.masks.last.shape == hidden.shape[:2]:
                idx = self.masks.last.to(hidden.device).float().argmax(dim=1)
                return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
            return hidden[:, -1]
        if pos == "mean":
            mask = (
                real
                if real is not None
                else torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            )
            return _masked_mean(hidden, mask)
        if self.masks is None:
            raise ConfigError(
                f"positions={pos!r} needs the batch's position masks: call recorder.set_batch(batch)"
            )
        mask = self.masks.text if pos == "text_mean" else self.masks.image
        if mask.shape != hidden.shape[:2]:
            return None
        return _masked_mean(hidden, mask.to(hidden.device).bool())

    def hook(self, layer: int):  # noqa: ANN201 - returns a forward hook closure
        def _hook(module: nn.Module, args: Any, output: Any) -> None:
            hidden = hidden_from_output(output)
            if self.prefill_only and not self.ctx.is_prefill(hidden):
                return None
            selected = self._select(hidden.detach())
            if selected is None:
                return None
            self._add(layer, selected.to(device=self.device, dtype=self.dtype))
            return None

        return _hook

    def _add(self, layer: int, value: torch.Tensor) -> None:
        if self.reduce == "mean":
            flat = value.reshape(-1, value.shape[-1]) if value.dim() > 1 else value[None]
            total = flat.sum(dim=0, dtype=torch.float64)
            self._sums[layer] = self._sums[layer] + total if layer in self._sums else total
            self._counts[layer] += flat.shape[0]
        else:
            self._chunks[layer].append(value)
            self._counts[layer] += value.shape[0]

    def result(self, meta: dict[str, Any] | None = None) -> HiddenStates:
        """The states recorded so far as ``HiddenStates``."""
        states: dict[int, torch.Tensor] = {}
        for layer in self.layers:
            if self.reduce == "mean":
                if self._counts[layer]:
                    states[layer] = (self._sums[layer] / self._counts[layer]).to(self.dtype)
            elif self._chunks[layer]:
                chunks = self._chunks[layer]
                same = all(c.shape[1:] == chunks[0].shape[1:] for c in chunks)
                states[layer] = torch.cat(chunks) if same else _pad_cat(chunks)
        info = {
            "positions": self.positions if isinstance(self.positions, str) else "mask",
            "reduce": self.reduce,
        }
        info.update(meta or {})
        count = max(self._counts.values()) if self._counts else 0
        return HiddenStates(states=states, meta=info, count=count)


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    denom = weights.sum(dim=1).clamp_min(1.0)
    return (hidden * weights).sum(dim=1) / denom


def _pad_cat(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``[B, T_i, H]`` chunks of different lengths, left-padding with zeros."""
    t = max(c.shape[1] for c in chunks)
    padded = [torch.nn.functional.pad(c, (0, 0, t - c.shape[1], 0)) for c in chunks]
    return torch.cat(padded)


@contextmanager
def record_hidden_states(
    bundle: ModelBundle,
    layers: int | Sequence[int] | None = None,
    positions: Positions | torch.Tensor = "last",
    *,
    reduce: Literal["none", "mean"] = "none",
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    prefill_only: bool = True,
) -> Iterator[Recorder]:
    """Record the outputs of decoder layers while the context is open.

    Args:
        bundle: the loaded model.
        layers: layer indices (None: all).
        positions: ``"last"`` (last prompt token, one vector per row), ``"all"`` (``[B, T, H]``),
            ``"mean"`` (mean over real tokens), ``"text_mean"`` / ``"image_mean"`` (mean over the
            batch's text / image masks; call ``recorder.set_batch``), or a boolean ``[B, T]`` mask.
        reduce: ``"none"`` keeps one entry per row; ``"mean"`` keeps a running mean over rows
            (constant memory whatever the number of samples).
        dtype: storage dtype of the recorded states.
        device: where recorded states are kept (default CPU).
        prefill_only: skip decode steps of ``generate`` (positions then refer to the prompt).

    Yields:
        A ``Recorder``; call ``recorder.result()`` (inside or after the block) for ``HiddenStates``.
    """
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ConfigError(f"positions={positions!r} is not one of {', '.join(POSITIONS)} or a boolean mask")
    if reduce not in REDUCES:
        raise ConfigError(f"reduce={reduce!r} is not one of {', '.join(REDUCES)}")
    if reduce == "mean" and isinstance(positions, str) and positions == "all":
        raise ConfigError("reduce='mean' with positions='all' is not supported: choose a per-row position")
    chosen = resolve_layers(bundle, layers)
    rec = Recorder(chosen, positions, reduce, dtype, device)
    rec.prefill_only = prefill_only
    handles = [outer_pre_hook(bundle.model, rec.ctx)]
    with registered(handles):
        for layer in chosen:
            handles.append(bundle.layers[layer].register_forward_hook(rec.hook(layer)))
        yield rec


def capture(
    bundle: ModelBundle,
    batches: Iterable[BatchInputs],
    layers: int | Sequence[int] | None = None,
    positions: Positions = "last",
    *,
    reduce: Literal["none", "mean"] = "none",
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    total: int | None = None,
) -> HiddenStates:
    """Run the model over ``batches`` (prefill only, no grad) and return the recorded states."""
    with record_hidden_states(bundle, layers, positions, reduce=reduce) as rec, torch.inference_mode():
        for batch in tqdm(batches, desc="capture", unit="batch", disable=not progress, total=total):
            rec.set_batch(batch)
            bundle.model(**batch.to(bundle.device).inputs)
        base = {"model": bundle.name, "family": bundle.family}
        base.update(meta or {})
        return rec.result(base)
