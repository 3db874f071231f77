"""Resumable training checkpoints in safetensors (no pickles).

A checkpoint directory holds:

- ``trainable.safetensors``: every parameter with ``requires_grad`` (projector, LLM, LoRA A/B), by name;
- ``optimizer.safetensors``: the optimizer's per-parameter tensors (``state.<index>.<key>``);
- ``rng.safetensors``: torch CPU (and CUDA) generator states; numpy's state array;
- ``trainer_state.json``: the step, the optimizer's param groups and non-tensor state, the scheduler state,
  Python's ``random`` state, numpy's position and any ``extra`` the trainer adds (its config, log).

:func:`load_checkpoint` restores all of it into an already-built model / optimizer / scheduler whose
trainable parameters have the same names and order as when the checkpoint was written.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_json, write_json_atomic
from vlsafe.models.families import get_family
from vlsafe.models.processors import save_processor

TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "trainer_state.json"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name, detached, contiguous, on CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def optimizer_split(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as safetensors-ready tensors (``state.<index>.<key>``) and JSON-ready rest."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "plain_state": plain}


def optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The optimizer ``state_dict`` that :func:`optimizer_split` took apart."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's torch (CPU, CUDA), numpy and Python RNG states: tensors and JSON-ready rest."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [py_version, list(py_state), py_gauss],
    }
    return tensors, meta


def set_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Set the RNG states :func:`rng_tensors` took."""
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    keys = tensors["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a resumable checkpoint directory (see the module docstring); returns its path.

    Args:
        path: the directory (created; existing files are overwritten).
        model: the model being trained (its ``requires_grad`` parameters are saved).
        optimizer: the optimizer, if any.
        scheduler: an LR scheduler with ``state_dict()`` (JSON-serialisable, e.g. ``LambdaLR``).
        step: optimizer steps done.
        extra: JSON-serialisable data stored under ``"extra"`` in ``trainer_state.json``.
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(trainable_state(model), str(out / TRAINABLE_FILE))
    state: dict[str, Any] = {"step": int(step), "extra": extra or {}}
    if optimizer is not None:
        tensors, meta = optimizer_split(optimizer)
        save_file(tensors, str(out / OPTIMIZER_FILE))
        state["optimizer"] = meta
    if scheduler is not None:
        sched = scheduler.state_dict()
        if "lr_lambdas" in sched:  # functions are rebuilt from the config; LambdaLR stores None for them
            sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])
        state["scheduler"] = sched
    rng, rng_meta = rng_tensors()
    save_file(rng, str(out / RNG_FILE))
    state["rng"] = rng_meta
    # written last: its presence marks a complete checkpoint
    write_json_atomic(out / STATE_FILE, state, indent=1)
    return out


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a complete checkpoint."""
    return (Path(path) / STATE_FILE).is_file() and (Path(path) / TRAINABLE_FILE).is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` directory with the highest step under ``output_dir``, if any."""
    root = Path(output_dir)
    found = []
    for child in root.glob("checkpoint-*") if root.is_dir() else []:
        suffix = child.name.split("-", 1)[1]
        if suffix.isdigit() and is_checkpoint(child):
            found.append((int(suffix), child))
    return max(found)[1] if found else None


def load_trainable(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the tensors of ``trainable.safetensors`` (or a file) into ``model``; returns the names loaded.

    Raises:
        InputError: a tensor names no parameter of the model or has another shape.
    """
    file = Path(path)
    file = file / TRAINABLE_FILE if file.is_dir() else file
    tensors = load_file(str(file))
    params = dict(model.named_parameters())
    for name, value in tensors.items():
        if name not in params:
            raise InputError(f"{file}: tensor {name!r} is not a parameter of the model being resumed")
        if params[name].shape != value.shape:
            raise InputError(
                f"{file}: tensor {name!r} has shape {tuple(value.shape)} but the model's is "
                f"{tuple(params[name].shape)}"
            )
        with torch.no_grad():
            params[name].copy_(value.to(params[name].dtype))
    return list(tensors)


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``trainer_state.json``'s content.

    Raises:
        InputError: ``path`` is not a complete checkpoint or does not fit the model.
    """
    root = Path(path)
    if not is_checkpoint(root):
        raise InputError(f"{root} is not a complete vlsafe checkpoint (no {STATE_FILE} / {TRAINABLE_FILE})")
    state: dict[str, Any] = read_json(root / STATE_FILE, "trainer state")
    load_trainable(model, root)
    if optimizer is not None and "optimizer" in state:
        tensors = load_file(str(root / OPTIMIZER_FILE))
        optimizer.load_state_dict(optimizer_join(tensors, state["optimizer"]))
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng(load_file(str(root / RNG_FILE)), state["rng"])
    return state


def save_trained_model(bundle: Any, out_dir: str | Path, merge_lora: bool = True) -> Path:
    """Save the trained model (LoRA merged in when ``merge_lora``) and its processor/tokenizer as a
    safetensors model directory that :func:`vlsafe.models.load_model` reads.

    Merging replaces ``bundle.model`` by the merged model (the peft wrapper is unloaded).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = bundle.model
    if merge_lora and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        bundle.model = model
    model.save_pretrained(str(out), safe_serialization=True)
    if bundle.processor is not None:
        save_processor(bundle.processor, get_family(bundle.family), out)
    else:
        bundle.tokenizer.save_pretrained(str(out))
    return out
