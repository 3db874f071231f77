"""Plan a merge: match tensors across inputs by canonical name, decide what is merged and what is copied.

Every output tensor takes the template's name, shape and (unless ``dtype`` is set) dtype. Its first
``merge_numel`` flat elements come from the method (or, for unselected layers, from ``rest_from``);
the remaining ones (extra embedding rows of a VLM whose vocabulary grew, e.g. image tokens) are
copied from the template.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from vlsafe.core.errors import InputError
from vlsafe.methods.merging.config import MergeConfig, parse_size, resolve_value
from vlsafe.methods.merging.io import CheckpointReader
from vlsafe.methods.merging.methods import CHUNK, METHODS
from vlsafe.methods.merging.names import detect_layout, layer_index, llm_name_for

logger = logging.getLogger(__name__)

__all__ = ["MergePlan", "TensorPlan", "plan_merge"]

_VOCAB_SUFFIXES = ("embed_tokens.weight", "lm_head.weight")
_OUT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TensorPlan:
    """How one output tensor is produced.

    Attributes:
        name: output name (the template's).
        canonical: canonical LLM name (``None`` for non-language tensors).
        shape: output shape.
        dtype: output dtype.
        action: ``"merge"`` (method over ``sources``) or ``"copy"`` (``sources[0]`` verbatim).
        sources: ``(input index, tensor name in that input)``; for a merge, the base first when present.
        weights: per-model weights (merge only).
        params: method parameters resolved for this tensor.
        merge_numel: flat elements produced by the action; the rest come from ``template_source``.
        template_source: ``(input index, name)`` of the template's tensor.
    """

    name: str
    canonical: str | None
    shape: tuple[int, ...]
    dtype: torch.dtype
    action: Literal["merge", "copy"]
    sources: list[tuple[int, str]]
    template_source: tuple[int, str]
    merge_numel: int
    weights: list[float] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class MergePlan:
    """The resolved merge: inputs, output tensors in write order, and summary figures."""

    config: MergeConfig
    readers: list[CheckpointReader]
    template: int
    tensors: list[TensorPlan]
    n_layers: int
    shard_bytes: int

    def counts(self) -> dict[str, int]:
        """Output tensor counts: merged, copied (by source role), extra-row tensors."""
        merged = sum(t.action == "merge" for t in self.tensors)
        copied = sum(t.action == "copy" for t in self.tensors)
        resized = sum(t.merge_numel < t.numel for t in self.tensors)
        return {"tensors": len(self.tensors), "merged": merged, "copied": copied, "resized_vocab": resized}

    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def expected_peak_bytes(self) -> int:
        """Working memory of the merge: float32 chunk buffers of every source plus temporaries.

        Independent of the model size: at most :data:`CHUNK` elements per source are held at once.
        """
        n_sources = max((len(t.sources) for t in self.tensors), default=1)
        spec = METHODS.get(self.config.method)
        temps = 3 + (n_sources if spec.consensus else 0) + (n_sources if spec.sparsify == "random" else 0)
        return CHUNK * (n_sources * (2 + 4) + 4 * temps) + 64 * 2**20  # + header/index/str overhead

    def describe(self) -> str:
        """A human-readable plan (what ``--dry-run`` prints)."""
        cfg = self.config
        lines = [f"method: {cfg.method} ({METHODS.get(cfg.method).url})"]
        for i, reader in enumerate(self.readers):
            role = "base" if cfg.base_model is not None and i == 0 else "model"
            tag = " [template]" if i == self.template else ""
            lines.append(f"  input {i} ({role}){tag}: {reader.ref} - {len(reader.tensors)} tensors")
        counts = self.counts()
        lines.append(
            f"output: {counts['tensors']} tensors, {counts['merged']} merged, {counts['copied']} copied, "
            f"{counts['resized_vocab']} with extra vocabulary rows from the template"
        )
        if cfg.layers is not None:
            lines.append(
                f"layers merged: {sorted(cfg.layers)} of {self.n_layers}; rest from {cfg.rest_from or 'template'}"
            )
        size = self.output_bytes()
        shards = max(1, -(-size // self.shard_bytes))
        lines.append(f"output size: {size / 2**20:.1f} MiB in ~{shards} shard(s)")
        largest = max((t.nbytes for t in self.tensors), default=0)
        lines.append(
            f"expected peak memory: ~{self.expected_peak_bytes() / 2**20:.0f} MiB "
            f"(largest tensor {largest / 2**20:.1f} MiB; chunks of {CHUNK} elements)"
        )
        for t in self.tensors:
            srcs = ", ".join(str(i) for i, _ in t.sources)
            extra = f" (+{t.numel - t.merge_numel} elems from template)" if t.merge_numel < t.numel else ""
            w = f" w={t.weights}" if t.action == "merge" and self.config.method != "slerp" else ""
            w = f" t={t.params.get('t')}" if t.action == "merge" and self.config.method == "slerp" else w
            lines.append(f"  {t.action:<5} {t.name} {list(t.shape)} <- [{srcs}]{w}{extra}")
        return "\n".join(lines)


def _canonical_map(reader: CheckpointReader) -> dict[str, str]:
    """canonical key -> tensor name; non-language tensors keyed by ``"raw:" + name``."""
    out: dict[str, str] = {}
    for name in reader.names():
        canonical = llm_name_for(name)
        out[canonical if canonical is not None else "raw:" + name] = name
    if "lm_head.weight" not in out and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]  # tied embeddings
    return out


def _choose_template(cfg: MergeConfig, readers: list[CheckpointReader]) -> int:
    refs = cfg.input_refs()
    if cfg.template is not None:
        return refs.index(cfg.template)
    for i, reader in enumerate(readers):
        if any(llm_name_for(n) is None for n in reader.names()) and detect_layout(reader.names()) is not None:
            return i
    return 0


def plan_merge(cfg: MergeConfig, readers: list[CheckpointReader] | None = None) -> MergePlan:
    """Open the inputs and plan every output tensor.

    Raises:
        InputError: a tensor is missing from an input, or shapes disagree.
        ConfigError: a per-layer weight list does not match the layer count, or a layer index is out of range.
    """
    readers = readers if readers is not None else [CheckpointReader(ref) for ref in cfg.input_refs()]
    spec = METHODS.get(cfg.method)
    maps = [_canonical_map(r) for r in readers]
    template = _choose_template(cfg, readers)
    rest = cfg.input_refs().index(cfg.rest_from) if cfg.rest_from is not None else template
    layers = {layer_index(n) for n in readers[template].names()} - {None}
    n_layers = max(layers) + 1 if layers else 0  # type: ignore[type-var, operator]
    if cfg.layers is not None:
        bad = [i for i in cfg.layers if i >= n_layers]
        if bad:
            raise InputError(
                f"layers lists {bad[0]}, but the template has {n_layers} decoder layers (0..{n_layers - 1})"
            )
    weight_specs = cfg.model_weights()
    out_dtype = _OUT_DTYPES[cfg.dtype] if cfg.dtype else None
    plans: list[TensorPlan] = []
    for name in readers[template].names():
        key = llm_name_for(name) or "raw:" + name
        canonical = None if key.startswith("raw:") else key
        info = readers[template].info(name)
        dtype = out_dtype if out_dtype is not None and info.dtype.is_floating_point else info.dtype
        tsrc = (template, name)
        mergeable = info.dtype.is_floating_point and (canonical is not None or cfg.merge_non_language)
        selected = cfg.layers is None or (canonical is not None and layer_index(canonical) in set(cfg.layers))
        if not mergeable or (not selected and rest == template):
            plans.append(TensorPlan(name, canonical, info.shape, dtype, "copy", [tsrc], tsrc, info.numel))
            continue
        indices = [rest] if not selected else list(range(len(readers)))
        sources = []
        for i in indices:
            if key not in maps[i]:
                raise InputError(
                    f"tensor {canonical or name!r} (from template {readers[template].ref}) is missing from "
                    f"input {readers[i].ref}; every merged tensor must exist in every input"
                )
            sources.append((i, maps[i][key]))
        merge_numel = _common_numel(
            key, info.shape, [readers[i].info(n).shape for i, n in sources], readers, sources
        )
        if not selected:
            plans.append(TensorPlan(name, canonical, info.shape, dtype, "copy", sources, tsrc, merge_numel))
            continue
        lookup = canonical or name
        weights = [resolve_value(w, lookup, n_layers, "weight") for w in weight_specs]
        params = {**spec.defaults, **cfg.parameters}
        if "t" in params:
            params["t"] = resolve_value(params["t"], lookup, n_layers, "parameters.t")
        plans.append(
            TensorPlan(
                name, canonical, info.shape, dtype, "merge", sources, tsrc, merge_numel, weights, params
            )
        )
    logger.info("planned %d tensors (%d layers, template %s)", len(plans), n_layers, readers[template].ref)
    return MergePlan(cfg, readers, template, plans, n_layers, parse_size(cfg.shard_size))


def _common_numel(
    key: str,
    shape: tuple[int, ...],
    shapes: list[tuple[int, ...]],
    readers: list[CheckpointReader],
    sources: list[tuple[int, str]],
) -> int:
    """Elements shared by all inputs: all of them, or the common vocabulary rows of an embedding."""
    if all(s == shape for s in shapes):
        return _prod(shape)
    vocab = key.endswith(_VOCAB_SUFFIXES) and all(len(s) == len(shape) and s[1:] == shape[1:] for s in shapes)
    if vocab and min(s[0] for s in shapes) <= shape[0]:
        rows = min(s[0] for s in shapes)
        return rows * _prod(shape[1:])
    detail = ", ".join(f"{readers[i].ref}: {list(readers[i].info(n).shape)}" for i, n in sources)
    raise InputError(f"tensor {key!r} has different shapes across inputs ({detail}; template {list(shape)})")


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
