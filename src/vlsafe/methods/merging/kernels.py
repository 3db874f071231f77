"""One tensor's merge, streamed in chunks: pre-pass statistics, then float32 chunks of the result."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.methods.merging.methods import (
    MethodSpec,
    dare_keep_mask,
    generalized_task_arithmetic,
    iter_chunks,
    magnitude_threshold,
    slerp_coefficients,
)

__all__ = ["TensorMerge"]

Reader = Callable[[int, int, int], torch.Tensor]


def _finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite (a float32 sum is non-finite iff an entry is, barring overflow)."""
    return math.isfinite(float(x.sum(dtype=torch.float32))) or bool(torch.isfinite(x).all())


class TensorMerge:
    """Merge one tensor (or its first ``numel`` flat elements) read through ``read``.

    Args:
        spec: the method.
        read: ``read(source, start, stop)`` returns flat elements of a source; source 0 is the base
            when ``has_base``, the models follow in order.
        numel: elements to merge.
        has_base: whether source 0 is the base.
        weights: one weight per model (for SLERP: ignored; ``params["t"]`` is used).
        params: method parameters with defaults filled in.
        seed: DARE seed.
        key: the tensor's canonical name (DARE seed derivation, error messages).
        densities: per-model densities overriding ``params["density"]``.
        labels: source names for error messages.
    """

    def __init__(
        self,
        spec: MethodSpec,
        read: Reader,
        *,
        numel: int,
        has_base: bool,
        weights: list[float],
        params: dict[str, Any],
        seed: int = 0,
        key: str = "",
        densities: list[float] | None = None,
        labels: list[str] | None = None,
    ) -> None:
        self.spec, self.read, self.numel, self.has_base = spec, read, numel, has_base
        self.weights, self.params, self.seed, self.key = weights, params, seed, key
        self.n_models = len(weights)
        density = float(params.get("density", 1.0))
        self.densities = densities if densities is not None else [density] * self.n_models
        n_sources = self.n_models + int(has_base)
        self.labels = labels or [f"input {i}" for i in range(n_sources)]
        self.thresholds: list[float] | None = None
        self._prepared = False

    def _source_chunk(self, i: int, start: int, stop: int, check: bool) -> torch.Tensor:
        chunk = self.read(i, start, stop)
        if check and chunk.is_floating_point() and not _finite(chunk):
            bad = "NaN" if torch.isnan(chunk).any() else "inf"
            raise InputError(
                f"tensor {self.key!r} of {self.labels[i]} contains {bad} values (inputs must be finite)"
            )
        return chunk

    def _delta_chunks(self, model: int) -> Callable[[], Iterator[torch.Tensor]]:
        off = int(self.has_base)

        def gen() -> Iterator[torch.Tensor]:
            for start, stop in iter_chunks(self.numel):
                t = self._source_chunk(model + off, start, stop, check=True).to(torch.float32, copy=True)
                yield t.sub_(self.read(0, start, stop).float()) if self.has_base else t

        return gen

    def prepare(self) -> None:
        """Gather the per-tensor statistics (TIES magnitude thresholds); idempotent.

        Must run before :meth:`compute`; after it, :meth:`compute` only reads ``self``, so chunks may be
        computed concurrently from several threads.
        """
        if self._prepared:
            return
        if self.spec.sparsify == "magnitude":
            self.thresholds = [
                magnitude_threshold(self._delta_chunks(m), self.numel, self.densities[m])
                for m in range(self.n_models)
            ]
        self._prepared = True

    def compute(self, index: int, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 result for flat elements ``[start, stop)``, chunk number ``index`` of :func:`iter_chunks`.

        Args:
            index: the chunk's position (DARE draws its mask per chunk index).
            start: first element.
            stop: end element.
            out: optional float32 buffer of ``stop - start`` elements for the result (used by the plain
                weighted sum; the returned tensor is what to read).
        """
        spec = self.spec
        check = spec.consensus or spec.sparsify != "none"
        off = int(self.has_base)
        base = self._source_chunk(0, start, stop, check) if self.has_base else None
        models = [self._source_chunk(m + off, start, stop, check) for m in range(self.n_models)]
        keep = None
        if spec.sparsify == "random":
            keep = [
                dare_keep_mask(
                    stop - start,
                    self.densities[m],
                    seed=self.seed,
                    key=self.key,
                    model=m,
                    chunk_index=index,
                )
                for m in range(self.n_models)
            ]
        result = generalized_task_arithmetic(
            base,
            models,
            self.weights,
            keep=keep,
            thresholds=self.thresholds,
            densities=self.densities,
            rescale=spec.rescale,
            consensus=spec.consensus,
            normalize=bool(self.params.get("normalize", False)),
            scale=float(self.params.get("lambda", 1.0)),
            out=out,
        )
        if not check and not _finite(result):
            self._find_bad(start, stop)
        return result

    def chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(start, float32 chunk)`` pairs covering ``[0, numel)`` in order."""
        if self.spec.kind == "slerp":
            yield from self._slerp_chunks()
            return
        self.prepare()
        for index, (start, stop) in enumerate(iter_chunks(self.numel)):
            yield start, self.compute(index, start, stop)

    def _find_bad(self, start: int, stop: int) -> None:
        for i in range(self.n_models + int(self.has_base)):
            self._source_chunk(i, start, stop, check=True)
        raise InputError(f"merging tensor {self.key!r} gave non-finite values (check the weights)")

    def _slerp_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        if self.n_models != 1 or not self.has_base:
            raise InputError(f"slerp merges base_model with exactly one model, got {self.n_models} models")
        t = float(self.params["t"])
        dot = n0 = n1 = 0.0
        for start, stop in iter_chunks(self.numel):
            a = self._source_chunk(0, start, stop, True).double()
            b = self._source_chunk(1, start, stop, True).double()
            dot += float(a @ b)
            n0 += float(a @ a)
            n1 += float(b @ b)
        c0, c1 = slerp_coefficients(dot, math.sqrt(n0), math.sqrt(n1), t)
        for start, stop in iter_chunks(self.numel):
            a = self.read(0, start, stop).to(torch.float32, copy=True)
            yield start, a.mul_(c0).add_(self.read(1, start, stop).float(), alpha=c1)
