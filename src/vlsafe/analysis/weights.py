"""Weight changes between two checkpoints: relative Frobenius norm per layer and module, streamed.

Tensors are read chunk by chunk from the safetensors shards (``vlsafe.methods.merging.io.CheckpointReader``:
positioned reads, no memory map, no full model in memory); for every tensor ``||A - B||_F``,
``||A||_F`` and ``||B||_F`` are accumulated in float64 and the relative change ``||A - B|| / ||A||``
reported per module and layer. A VLM can be compared with a text LLM: with ``names="auto"`` the
language-model tensors of both are matched by their canonical LLM names (``vlsafe.methods.merging.names``) and
the tensors without a counterpart (vision tower, projector) are listed as skipped.

A VLM's language model often has a *resized vocabulary* (an added ``<image>`` token: 49,153 embedding rows
against the LLM's 49,152). Such tensors differ only in their leading dimension; ``resized`` chooses what
happens to them: ``"error"`` (default: the architectures are treated as different and the first mismatching
tensor is named), ``"skip"`` (left out of the comparison and listed in :attr:`WeightDiffResult.resized`),
or ``"overlap"`` (the common leading rows are compared; the extra rows are ignored). Tensors whose shapes
differ in any other dimension always raise.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.threads import torch_threads
from vlsafe.methods.merging.io import CheckpointReader
from vlsafe.methods.merging.names import llm_name_for

logger = logging.getLogger(__name__)

#: Elements per chunk (1 MiB of float32): bounded memory and cache-resident arithmetic.
CHUNK_ELEMENTS = 1 << 18
NAME_MODES = ("auto", "exact", "llm")
RESIZED_MODES = ("error", "skip", "overlap")
_LAYER_RE = re.compile(r"^(?P<component>.*?)\.?layers\.(?P<layer>\d+)\.(?P<module>.+)$")


def split_name(name: str) -> tuple[str, int | None, str]:
    """``(component, layer, module)`` of a tensor name; ``layer`` is ``None`` outside numbered layers.

    Example: ``"model.layers.3.self_attn.q_proj.weight"`` -> ``("model", 3, "self_attn.q_proj")``.
    """
    m = _LAYER_RE.match(name)
    if m is None:
        return ("", None, name.removesuffix(".weight"))
    return (m["component"], int(m["layer"]), m["module"].removesuffix(".weight"))


@dataclass
class WeightDiffResult:
    """Per-tensor weight changes of checkpoint B relative to A.

    Attributes:
        rows: one dict per compared tensor: ``name`` (A's name), ``name_b``, ``component``, ``layer``,
            ``module``, ``shape``, ``norm_a``, ``norm_b``, ``diff`` (``||A-B||_F``), ``relative``
            (``diff / norm_a``; ``None`` when ``norm_a`` is 0 and the tensors differ).
            Compared tensors also carry ``shape_b`` and ``rows_compared`` (the leading rows compared:
            all of them unless ``resized="overlap"`` compared fewer; ``None`` for 0-d tensors).
        skipped_a / skipped_b: names without a counterpart (only with VLM<->LLM name matching).
        meta: the two checkpoints, matching mode, ``resized`` mode, bytes read.
        resized: one dict per tensor pair that differs only in its leading dimension (``name``,
            ``name_b``, ``shape_a``, ``shape_b``, ``action``: ``"skipped"`` or ``"overlap"``).
    """

    rows: list[dict[str, Any]]
    skipped_a: list[str] = field(default_factory=list)
    skipped_b: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    resized: list[dict[str, Any]] = field(default_factory=list)

    def per_layer(self, component: str | None = None) -> dict[int, float]:
        """Relative change of all tensors of each layer together: ``sqrt(sum diff^2) / sqrt(sum norm_a^2)``."""
        comp = component if component is not None else self.main_component()
        num: dict[int, float] = {}
        den: dict[int, float] = {}
        for r in self.rows:
            if r["layer"] is None or r["component"] != comp:
                continue
            num[r["layer"]] = num.get(r["layer"], 0.0) + r["diff"] ** 2
            den[r["layer"]] = den.get(r["layer"], 0.0) + r["norm_a"] ** 2
        return {k: (math.sqrt(num[k] / den[k]) if den[k] else 0.0) for k in sorted(num)}

    def components(self) -> list[str]:
        """Components (name prefixes before ``layers.N``) that have numbered layers, largest first."""
        counts: dict[str, set[int]] = {}
        for r in self.rows:
            if r["layer"] is not None:
                counts.setdefault(r["component"], set()).add(r["layer"])
        return sorted(counts, key=lambda c: (-len(counts[c]), c))

    def main_component(self) -> str:
        comps = self.components()
        lm = [c for c in comps if llm_name_for(f"{c}.layers.0.x") is not None]
        return (lm or comps or [""])[0]

    def matrix(self, component: str) -> tuple[list[str], list[int], torch.Tensor]:
        """``(modules, layers, relative [modules, layers])`` of one component (NaN where absent)."""
        rows = [r for r in self.rows if r["component"] == component and r["layer"] is not None]
        modules = sorted({r["module"] for r in rows})
        layers = sorted({r["layer"] for r in rows})
        mat = torch.full((len(modules), len(layers)), float("nan"), dtype=torch.float64)
        mi = {m: i for i, m in enumerate(modules)}
        li = {layer: i for i, layer in enumerate(layers)}
        for r in rows:
            if r["relative"] is not None:
                mat[mi[r["module"]], li[r["layer"]]] = r["relative"]
        return modules, layers, mat

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        """The ``n`` tensors with the largest relative change."""
        ranked = sorted(self.rows, key=lambda r: -(r["relative"] if r["relative"] is not None else math.inf))
        return ranked[:n]


def _is_resize(sa: tuple[int, ...], sb: tuple[int, ...]) -> bool:
    """Whether two shapes differ only in their leading dimension (a resized vocabulary)."""
    return len(sa) == len(sb) >= 1 and sa[1:] == sb[1:] and sa[0] != sb[0]


def _match(
    a: CheckpointReader, b: CheckpointReader, names: str, resized: str = "error"
) -> tuple[list[tuple[str, str]], list[str], list[str], list[dict[str, Any]]]:
    """Pairs ``(name_a, name_b)`` to compare, the skipped names and the resized pairs.

    Raises on an architecture mismatch; with ``resized`` ``"skip"`` / ``"overlap"`` a pair that differs
    only in its leading dimension is recorded instead (and, for ``"skip"``, left out of the pairs).
    """
    if names not in NAME_MODES:
        raise ConfigError(f"names={names!r} is not one of {', '.join(NAME_MODES)}")
    if resized not in RESIZED_MODES:
        raise ConfigError(f"resized={resized!r} is not one of {', '.join(RESIZED_MODES)}")
    na, nb = a.names(), b.names()
    mode = names
    if mode == "auto":
        mode = "exact" if set(na) == set(nb) else "llm"
    if mode == "exact":
        pairs = [(n, n) for n in sorted(set(na) | set(nb))]
        skipped_a: list[str] = []
        skipped_b: list[str] = []
    else:
        ca = {c: n for n in na if (c := llm_name_for(n)) is not None}
        cb = {c: n for n in nb if (c := llm_name_for(n)) is not None}
        skipped_a = sorted(n for n in na if llm_name_for(n) is None)
        skipped_b = sorted(n for n in nb if llm_name_for(n) is None)
        if not ca or not cb:
            raise InputError(
                f"no language-model tensors to match by LLM name in {a.ref if not ca else b.ref}; "
                "compare same-architecture checkpoints with names='exact'"
            )
        pairs = [
            (ca.get(c, f"<missing: {c}>"), cb.get(c, f"<missing: {c}>")) for c in sorted(set(ca) | set(cb))
        ]
    kept: list[tuple[str, str]] = []
    resized_pairs: list[dict[str, Any]] = []
    for name_a, name_b in pairs:
        in_a, in_b = name_a in a.tensors, name_b in b.tensors
        if not in_a or not in_b:
            where, missing = (a.ref, name_a) if not in_a else (b.ref, name_b)
            present = name_b if not in_a else name_a
            raise InputError(
                f"the checkpoints have different architectures: first mismatching tensor {present!r} "
                f"has no counterpart {missing!r} in {where} (matching mode {mode!r})"
            )
        sa, sb = tuple(a.info(name_a).shape), tuple(b.info(name_b).shape)
        if sa != sb:
            resize = _is_resize(sa, sb)
            if not resize or resized == "error":
                hint = (
                    " (only the leading dimension differs, e.g. a resized vocabulary: pass "
                    "resized='skip' or resized='overlap' to compare the rest)"
                    if resize
                    else ""
                )
                raise InputError(
                    f"the checkpoints have different architectures: first mismatching tensor {name_a!r} has "
                    f"shape {list(sa)} in {a.ref} but {list(sb)} in {b.ref}{hint}"
                )
            action = "skipped" if resized == "skip" else "overlap"
            resized_pairs.append(
                {"name": name_a, "name_b": name_b, "shape_a": list(sa), "shape_b": list(sb), "action": action}
            )
            if resized == "skip":
                continue
        kept.append((name_a, name_b))
    return kept, skipped_a, skipped_b, resized_pairs


def _norms(
    a: CheckpointReader, b: CheckpointReader, name_a: str, name_b: str, numel: int | None = None
) -> tuple[float, float, float, int]:
    """``||A-B||``, ``||A||``, ``||B||`` of one tensor pair, streamed in cache-sized float32 chunks.

    Chunks are converted into two preallocated float32 buffers (no allocation per chunk) and the
    sums of squares are BLAS dot products, accumulated in float64 on the Python side. ``numel``
    limits the comparison to the leading elements (row-major: the common leading rows of a resized
    tensor); default the whole of A's tensor.
    """
    with torch_threads(1):
        return _norms_single(a, b, name_a, name_b, numel)


def _norms_single(
    a: CheckpointReader, b: CheckpointReader, name_a: str, name_b: str, numel: int | None = None
) -> tuple[float, float, float, int]:
    if numel is None:
        numel = a.info(name_a).numel
    diff2 = na2 = nb2 = 0.0
    nbytes = 0
    size = min(max(numel, 1), CHUNK_ELEMENTS)
    buf_a = torch.empty(size, dtype=torch.float32)
    buf_b = torch.empty(size, dtype=torch.float32)
    for start in range(0, max(numel, 1), CHUNK_ELEMENTS):
        stop = min(numel, start + CHUNK_ELEMENTS)
        ta, tb = a.read(name_a, start, stop), b.read(name_b, start, stop)
        nbytes += ta.numel() * ta.element_size() + tb.numel() * tb.element_size()
        n = ta.numel()
        fa, fb = buf_a[:n], buf_b[:n]
        fa.copy_(ta.reshape(-1))
        fb.copy_(tb.reshape(-1))
        na2 += float(torch.dot(fa, fa))
        nb2 += float(torch.dot(fb, fb))
        fb.sub_(fa)  # fb now holds B - A
        diff2 += float(torch.dot(fb, fb))
    return math.sqrt(diff2), math.sqrt(na2), math.sqrt(nb2), nbytes


def weight_diff(
    checkpoint_a: str | Path,
    checkpoint_b: str | Path,
    *,
    names: str = "auto",
    resized: str = "error",
    progress: bool = True,
) -> WeightDiffResult:
    """Relative Frobenius norm of the change from checkpoint A to B, per tensor (module x layer).

    Args:
        checkpoint_a: the reference (e.g. the text LLM before VL adaptation): a folder of safetensors
            shards or one ``.safetensors`` file.
        checkpoint_b: the changed checkpoint (e.g. the VLM after adaptation).
        names: ``exact`` (same tensor names and shapes in both), ``llm`` (match language-model tensors by
            their canonical LLM names: VLM vs LLM), or ``auto`` (``exact`` when the name sets agree).
        resized: tensors whose shapes differ only in the leading dimension (a resized vocabulary):
            ``error`` (raise, naming the first one), ``skip`` (leave them out and list them in
            ``result.resized``) or ``overlap`` (compare the common leading rows; also listed).
        progress: show a progress bar.

    Raises:
        InputError: the architectures differ (with ``resized="error"``: also a resized vocabulary);
            the message names the first mismatching tensor.
        ConfigError: ``names`` or ``resized`` is not a known mode.
    """
    with CheckpointReader(checkpoint_a) as a, CheckpointReader(checkpoint_b) as b:
        pairs, skipped_a, skipped_b, resized_pairs = _match(a, b, names, resized)
        rows = []
        total_bytes = 0
        for name_a, name_b in tqdm(pairs, desc="weight diff", unit="tensor", disable=not progress):
            shape_a, shape_b = list(a.info(name_a).shape), list(b.info(name_b).shape)
            n_rows = min(shape_a[0], shape_b[0]) if shape_a else None
            numel = None
            if shape_a != shape_b and n_rows is not None:
                numel = n_rows * math.prod(shape_a[1:])
            diff, norm_a, norm_b, nbytes = _norms(a, b, name_a, name_b, numel)
            total_bytes += nbytes
            component, layer, module = split_name(llm_name_for(name_a) or name_a)
            if norm_a > 0:
                relative: float | None = diff / norm_a
            else:
                relative = 0.0 if diff == 0 else None
            rows.append(
                {
                    "name": name_a,
                    "name_b": name_b,
                    "component": component,
                    "layer": layer,
                    "module": module,
                    "shape": shape_a,
                    "shape_b": shape_b,
                    "rows_compared": n_rows,
                    "norm_a": norm_a,
                    "norm_b": norm_b,
                    "diff": diff,
                    "relative": relative,
                }
            )
    meta = {
        "checkpoint_a": str(checkpoint_a),
        "checkpoint_b": str(checkpoint_b),
        "names": names,
        "resized": resized,
        "bytes_read": total_bytes,
    }
    if resized_pairs:
        logger.info(
            "weight diff: %d resized tensor(s) %s (%s)",
            len(resized_pairs),
            "skipped" if resized == "skip" else "compared on their common leading rows",
            ", ".join(r["name"] for r in resized_pairs),
        )
    logger.info("weight diff: %d tensors, %.1f MB read", len(rows), total_bytes / 1e6)
    return WeightDiffResult(rows, skipped_a, skipped_b, meta, resized_pairs)
