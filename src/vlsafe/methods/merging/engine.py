"""Execute a merge plan: stream chunks through the method into sharded safetensors, copy the side files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.core.io import check_writable, write_text_atomic
from vlsafe.core.staging import staged_dir
from vlsafe.core.threads import torch_threads
from vlsafe.methods.merging.config import MergeConfig
from vlsafe.methods.merging.io import ShardedWriter, is_weight_file
from vlsafe.methods.merging.kernels import TensorMerge
from vlsafe.methods.merging.methods import METHODS, iter_chunks
from vlsafe.methods.merging.plan import MergePlan, plan_merge

logger = logging.getLogger(__name__)

__all__ = ["MergeResult", "merge", "merge_workers", "run_merge"]


@dataclass
class MergeResult:
    """What a merge did (or, for a dry run, would do).

    Attributes:
        out_dir: the output directory (``None`` for a dry run without one).
        plan: the resolved plan (``plan.describe()`` is the dry-run text).
        counts: tensor counts (see :meth:`MergePlan.counts`).
        bytes_written: output weight bytes (0 for a dry run).
        seconds: wall time of the merge.
        dry_run: whether nothing was written.
    """

    out_dir: Path | None
    plan: MergePlan
    counts: dict[str, int]
    bytes_written: int
    seconds: float
    dry_run: bool


def _as_config(config: MergeConfig | str | Path | dict[str, Any]) -> MergeConfig:
    if isinstance(config, MergeConfig):
        return config
    if isinstance(config, dict):
        return MergeConfig.from_dict(config)
    return MergeConfig.from_yaml(config)


class _Scratch(threading.local):
    """Per-thread reusable buffers: a fresh ~1 MiB buffer per chunk costs page faults every time."""

    def __init__(self) -> None:
        self.bufs: dict[Any, torch.Tensor] = {}

    def get(self, key: Any, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A 1-D ``dtype`` buffer of ``numel`` elements, reused across calls with the same key and dtype."""
        buf = self.bufs.get((key, dtype))
        if buf is None or buf.numel() < numel:
            buf = self.bufs[key, dtype] = torch.empty(max(numel, 64), dtype=dtype)
        return buf[:numel]


class _Job:
    """One output tensor: how to produce any chunk of it, and where to write it."""

    def __init__(self, plan: MergePlan, index: int, scratch: _Scratch) -> None:
        self.plan, self.index, self.scratch = plan, index, scratch
        t = self.t = plan.tensors[index]
        self.op: TensorMerge | None = None
        if t.action == "merge":
            cfg = plan.config
            densities = [
                m.density if m.density is not None else float(t.params.get("density", 1.0))
                for m in cfg.models
            ]
            self.op = TensorMerge(
                METHODS.get(cfg.method),
                self.read,
                numel=t.merge_numel,
                has_base=cfg.base_model is not None,
                weights=t.weights,
                params=t.params,
                seed=cfg.seed,
                key=t.canonical or t.name,
                densities=densities,
                labels=[plan.readers[i].ref for i, _ in t.sources],
            )
        self.item = t.dtype.itemsize

    def read(self, i: int, start: int, stop: int) -> torch.Tensor:
        """Elements of source ``i`` (into this thread's buffer for that source: use before the next read)."""
        idx, name = self.t.sources[i]
        return self._read_from(idx, name, start, stop, ("src", i))

    def _read_from(self, idx: int, name: str, start: int, stop: int, key: Any) -> torch.Tensor:
        reader = self.plan.readers[idx]
        dtype = reader.info(name).dtype
        buf = self.scratch.get(key, (stop - start) * dtype.itemsize, torch.uint8)
        return reader.read(name, start, stop, out=buf)

    def tasks(self) -> list[tuple[str, int, int, int]]:
        """``(kind, chunk index, start, stop)`` work items covering the tensor."""
        t = self.t
        kind = "copy" if self.op is None else ("whole" if self.op.spec.kind == "slerp" else "merge")
        if kind == "whole":
            items = [(kind, 0, 0, t.merge_numel)]
        else:
            items = [(kind, i, a, b) for i, (a, b) in enumerate(iter_chunks(t.merge_numel))]
        items += [("tail", i, a, b) for i, (a, b) in enumerate(iter_chunks(t.numel - t.merge_numel))]
        return items

    def run(self, kind: str, index: int, start: int, stop: int, writer: ShardedWriter) -> int:
        """Produce and write one work item; returns the bytes written."""
        if kind == "whole":
            assert self.op is not None
            return sum(self._write(s, c, writer) for s, c in self.op.chunks())
        if kind == "merge":
            assert self.op is not None
            acc = self.scratch.get("acc", stop - start, torch.float32)
            chunk = self.op.compute(index, start, stop, out=acc)
        elif kind == "copy":
            chunk = self.read(0, start, stop)
        else:
            tidx, tname = self.t.template_source
            off = self.t.merge_numel
            chunk = self._read_from(tidx, tname, off + start, off + stop, "tail")
            start += off
        return self._write(start, chunk, writer)

    def _write(self, start: int, chunk: torch.Tensor, writer: ShardedWriter) -> int:
        if chunk.dtype != self.t.dtype:
            chunk = self.scratch.get("out", chunk.numel(), self.t.dtype).copy_(chunk)
        writer.pwrite(self.index, start * self.item, chunk)
        return chunk.numel() * self.item


def merge_workers(threads: int | None = None) -> int:
    """Worker threads for a merge: ``threads``, else torch's intra-op thread count, capped by the CPUs."""
    n = threads if threads is not None else torch.get_num_threads()
    return max(1, min(int(n), os.cpu_count() or 1))


def _write_weights(plan: MergePlan, out_dir: Path, progress: bool, threads: int | None = None) -> int:
    """Compute every chunk on a pool of worker threads, each writing its result straight to its file offset.

    Chunks of one tensor are independent once the tensor's statistics (TIES thresholds) are gathered, which
    the main thread does for the next tensor while the workers compute the current one. Every worker reuses
    its own buffers, and torch runs one intra-op thread per worker, so results do not depend on the thread
    count.
    """
    entries = [(t.name, t.dtype, t.shape) for t in plan.tensors]
    writer = ShardedWriter(out_dir, entries, plan.shard_bytes, metadata={"vlsafe_merge": plan.config.method})
    workers = merge_workers(threads)
    scratch = _Scratch()
    bar = tqdm(total=plan.output_bytes(), unit="B", unit_scale=True, desc="merge", disable=not progress)
    pending: deque[Future[int]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vlsafe-merge")
    ok = False
    # one intra-op thread: chunks are cache-sized, parallelism comes from the worker threads
    with torch_threads(1):
        try:
            writer.open_all()
            for i in range(len(plan.tensors)):
                job = _Job(plan, i, scratch)
                if job.op is not None and job.op.spec.kind != "slerp":
                    job.op.prepare()
                for task in job.tasks():
                    pending.append(pool.submit(job.run, *task, writer))
                    while len(pending) > 8 * workers:
                        bar.update(pending.popleft().result())
            while pending:
                bar.update(pending.popleft().result())
            writer.close()
            ok = True
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
            if not ok:
                writer.abort()
            bar.close()
    return writer.total_bytes


def _copy_side_files(plan: MergePlan, out_dir: Path) -> list[str]:
    src = plan.readers[plan.template].dir
    copied = []
    for path in sorted(src.iterdir()):
        if not path.is_file() or is_weight_file(path.name) or path.name in ("README.md", "merge_config.yaml"):
            continue
        shutil.copy2(path, out_dir / path.name)
        copied.append(path.name)
    config_path = out_dir / "config.json"
    if plan.config.dtype and config_path.is_file():
        data = json.loads(config_path.read_text())
        data["dtype"] = plan.config.dtype
        if "torch_dtype" in data:
            data["torch_dtype"] = plan.config.dtype
        write_text_atomic(config_path, json.dumps(data, indent=2) + "\n")
    return copied


def _model_card(plan: MergePlan, result_bytes: int) -> str:
    cfg = plan.config
    spec = METHODS.get(cfg.method)
    counts = plan.counts()
    inputs = "\n".join(
        f"- {'base' if cfg.base_model is not None and i == 0 else 'model'}: `{r.ref}`"
        + (
            " (template: names, config, tokenizer, processor, non-language tensors)"
            if i == plan.template
            else ""
        )
        for i, r in enumerate(plan.readers)
    )
    layers = (
        f"\nOnly decoder layers {sorted(cfg.layers)} were merged; every other tensor comes from `{cfg.rest_from or plan.readers[plan.template].ref}`.\n"
        if cfg.layers
        else ""
    )
    return (
        f"# Merged model ({cfg.method})\n\n"
        f"Made with `vlsafe merge` using **{cfg.method}** ({spec.description}; {spec.url}).\n\n"
        f"## Inputs\n\n{inputs}\n{layers}\n"
        f"## Output\n\n{counts['tensors']} tensors ({counts['merged']} merged, {counts['copied']} copied, "
        f"{counts['resized_vocab']} with extra vocabulary rows from the template), {result_bytes / 2**20:.1f} MiB.\n"
        f"The full resolved configuration is in `merge_config.yaml`.\n\n"
        "Merging changes safety behaviour: evaluate the merged model (`vlsafe eval`) before use.\n"
    )


def merge(
    config: MergeConfig | str | Path | dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> MergeResult:
    """Merge checkpoints as ``config`` says, streaming one chunk at a time.

    The output is written to a hidden staging folder beside ``out_dir`` (weights, then the copied side files,
    then ``merge_config.yaml`` and ``README.md``) and renamed into place only when complete; a merge that fails
    or is interrupted removes its staging folder and leaves ``out_dir`` as it was (see
    :func:`vlsafe.core.staging.staged_dir`).

    Args:
        config: a :class:`MergeConfig`, a dict of its fields, or a YAML path.
        out_dir: output directory (default: ``config.output``).
        dry_run: plan only (``result.plan.describe()`` tells what would happen); writes nothing.
        overwrite: replace a non-empty output directory. The new output is built beside it and swapped in when
            complete, so the directory holds the old model or the new one, never a part of either.
        progress: show a progress bar.
        threads: worker threads computing and writing chunks (default: ``torch.get_num_threads()``,
            capped by the CPU count); the result is the same for any value.

    Returns:
        A :class:`MergeResult`.

    Raises:
        ConfigError: bad config, no output directory, or a non-empty one without ``overwrite``.
        InputError: missing tensors, shape mismatches, non-finite inputs, corrupt or truncated input shards.
        OutputError: the output directory cannot be written (checked before any tensor is merged).
        ModelLoadError: an input cannot be found.
    """
    cfg = _as_config(config)
    t0 = time.perf_counter()
    plan = plan_merge(cfg)
    target = Path(out_dir) if out_dir is not None else (Path(cfg.output) if cfg.output else None)
    try:
        if dry_run:
            return MergeResult(target, plan, plan.counts(), 0, time.perf_counter() - t0, True)
        if target is None:
            raise ConfigError("no output directory: pass out_dir (CLI: --out) or set output in the config")
        inputs = {r.dir.resolve() for r in plan.readers}
        if target.resolve() in inputs:
            raise ConfigError(f"output directory {str(target)!r} is one of the inputs; choose another")
        if target.exists() and target.is_dir() and any(target.iterdir()) and not overwrite:
            raise ConfigError(
                f"output directory {str(target)!r} is not empty (pass overwrite=True / --overwrite)"
            )
        check_writable(target, "merge output directory")
        with staged_dir(target, overwrite=overwrite, what="merge output directory") as staging:
            written = _write_weights(plan, staging, progress, threads)
            _copy_side_files(plan, staging)
            cfg.to_yaml(staging / "merge_config.yaml")  # provenance last: a folder with it is complete
            write_text_atomic(staging / "README.md", _model_card(plan, written))
    finally:
        for reader in plan.readers:
            reader.close()
    seconds = time.perf_counter() - t0
    logger.info("merged %d tensors into %s in %.1f s", len(plan.tensors), target, seconds)
    return MergeResult(target, plan, plan.counts(), written, seconds, False)


def run_merge(
    config_path: str | Path,
    out_dir: str | Path | None,
    *,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    threads: int | None = None,
) -> MergeResult:
    """CLI entry: load the YAML config at ``config_path`` and :func:`merge` it."""
    return merge(
        MergeConfig.from_yaml(config_path),
        out_dir,
        dry_run=dry_run,
        overwrite=overwrite,
        progress=progress,
        threads=threads,
    )
