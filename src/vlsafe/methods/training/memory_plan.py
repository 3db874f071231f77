"""How much GPU memory a training run needs, per GPU, from the model's shapes alone (nothing is loaded).

:func:`estimate_training_memory` takes a model directory, hub id, ``organism:<system>`` reference, HF config
(object or ``config.json`` dict) or model, builds the model on the ``meta`` device (no weights, no memory)
to count its parameters exactly (:func:`model_shape`), and applies :func:`plan_memory`, a documented rough
model of a data-parallel training step::

    from vlsafe.methods.training.memory_plan import estimate_training_memory
    plan = estimate_training_memory("configs/recipes/shapes/llava-1.5-7b", trainable="projector_llm",
                                    strategy="zero3", n_gpus=8, batch_size=16, seq_len=2048)
    plan["total_gib"], plan["fits"]

**The memory model** (bytes per GPU; ``n`` GPUs, ``P`` parameters stored, ``T`` of them trained, ``w`` bytes
per weight: 2 in ``bf16``/``fp16``, 4 in ``fp32``):

* weights ``P·w`` (LoRA adapters add their parameters to ``P``);
* gradients ``T·w``;
* optimizer state ``T·o``: ``adamw`` keeps an fp32 master copy and two fp32 moments, ``o = 12`` in 16-bit
  precision (``o = 8`` in fp32, where the weights are the master copy), the figure of the ZeRO paper's mixed-precision
  Adam; ``adamw_no_master`` keeps the two moments in the weights' dtype and no master copy, ``o = 2w``
  (plain ``torch.optim.AdamW`` on a model loaded in bfloat16, without DeepSpeed);
* strategy: ``ddp`` replicates everything and adds DDP's gradient buckets (``T·w``) when ``n > 1``;
  ``fsdp`` (full shard) and ``zero3`` divide weights, gradients and optimizer state by ``n`` and add the
  unsharded working set: the input embeddings, the output head and two decoder layers (the one running and
  the one prefetched) at ``w`` bytes, doubled when those layers train (their unsharded gradients before the
  reduce-scatter); ``zero3_offload`` keeps only that working set on the GPU and moves the parameters
  (``P·w / n``), fp32 gradients (``T·4 / n``) and the optimizer state (``T·o / n``) to host memory
  (``cpu_gib``, per process; a node holds that times its GPUs);
* activations, for ``b`` rows of ``s`` tokens (image tokens included) through ``L`` decoder layers of width
  ``h``, MLP width ``i`` and key/value width ``kv``, at ``a`` bytes (2 in 16-bit, 4 in fp32): one decoder
  layer keeps ``k·h·a`` bytes per token, with ``k = (7h + 3kv + 4i) / h`` elements (the two norm inputs and
  outputs, q/k/v, the rotated q/k and the attention output, the MLP's gate, up, activation and product;
  fused attention keeps no ``s × s`` scores), so ``b·s·L·k·h·a`` without checkpointing (k ≈ 20.75 elements,
  41.5 bytes in bf16, for LLaMA-7B). With gradient checkpointing each layer keeps only its input
  (``b·s·L·h·a``) plus one layer's full activations while it is recomputed (``b·s·k·h·a``). The logits add
  ``r·V·(a + 8)`` for ``r`` rows of the output head alive at once (the logits, their fp32 copy and the fp32
  log-softmax): vlsafe's reply-only losses run the head on ``loss_chunk`` (256) supervised rows at a time
  under checkpointing, so ``r = min(loss_chunk, b·s)``; a stock ``model(**batch, labels=...)`` loss
  (``loss_chunk=None``) has ``r = b·s``. The vision tower never trains in vlsafe's stages, so it keeps no
  activations; the projector's are negligible. DPO runs chosen and rejected rows together: pass
  ``batch_size = 2 × pairs``;
* overhead: 1.5 GiB (CUDA context, NCCL and cuBLAS workspaces).

``fits`` is ``total_gib <= 0.9 × gpu_memory_gib`` (10% for allocator fragmentation and the peaks this rough
model misses). Counts are exact; the byte model is an estimate to choose a strategy and a GPU count, not a
guarantee.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from vlsafe.core.errors import ConfigError, ModelLoadError
from vlsafe.methods.training.stages import (
    LLM_PROJECTIONS,
    Stage,
    language_model,
    projector_params,
    unwrap,
)
from vlsafe.models.families import family_for_model_type
from vlsafe.models.loading import decoder_layers
from vlsafe.models.references import resolve_reference

__all__ = [
    "CUDA_OVERHEAD_GIB",
    "FIT_FRACTION",
    "ModelShape",
    "estimate_training_memory",
    "model_shape",
    "plan_memory",
]

Method = Literal["full", "lora"]
Precision = Literal["bf16", "fp16", "fp32"]
Optimizer = Literal["adamw", "adamw_no_master"]
Strategy = Literal["ddp", "fsdp", "zero3", "zero3_offload"]

GIB = 1024**3
#: Fixed per-GPU overhead: CUDA context, NCCL and cuBLAS workspaces.
CUDA_OVERHEAD_GIB = 1.5
#: ``fits`` when the estimate is at most this share of the GPU's memory.
FIT_FRACTION = 0.9
_WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
_STRATEGIES = ("ddp", "fsdp", "zero3", "zero3_offload")
_FULL_TO_LORA = {"llm": "llm_lora", "projector_llm": "projector_lora"}


@dataclass(frozen=True)
class ModelShape:
    """Exact parameter counts and the dimensions the activation model needs.

    Attributes:
        name: where the shapes came from.
        total: every parameter once (tied weights once).
        language_model: the LLM decoder: input embeddings, decoder layers, final norm (not the output head).
        embeddings: the input embeddings.
        lm_head: the output head (0 when tied to the input embeddings).
        projector: the vision-language projector (0 for a text-only LLM).
        vision: everything else (the vision tower).
        largest_layer: parameters of the largest decoder layer.
        lora_per_rank: LoRA parameters per unit of rank on the LLM's target linear layers, ``Σ (in + out)``.
        num_layers, hidden_size, intermediate_size, kv_size, vocab_size: the LLM's dimensions
            (``kv_size`` = key/value heads × head size).
    """

    name: str
    total: int
    language_model: int
    embeddings: int
    lm_head: int
    projector: int
    vision: int
    largest_layer: int
    lora_per_rank: int
    num_layers: int
    hidden_size: int
    intermediate_size: int
    kv_size: int
    vocab_size: int

    def trainable(self, stage: Stage, lora_rank: int = 16) -> int:
        """Parameters that ``stage`` trains (as :func:`vlsafe.methods.training.stages.apply_stage` sets them).

        Raises:
            ConfigError: a projector stage on a model without a projector, or an unknown stage.
        """
        if stage not in Stage.__args__:  # type: ignore[attr-defined]
            raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(Stage.__args__)}")  # type: ignore[attr-defined]
        if stage.startswith("projector") and self.projector == 0:
            raise ConfigError(f"stage {stage!r} trains the projector; {self.name} has none")
        n = self.projector if stage.startswith("projector") else 0
        if stage in ("llm", "projector_llm"):
            n += self.language_model - self.embeddings
        if stage.endswith("_lora"):
            n += self.lora_params(lora_rank)
        return n

    def lora_params(self, rank: int) -> int:
        """Parameters of rank-``rank`` LoRA adapters on the target linear layers."""
        return rank * self.lora_per_rank


def _numel(params: Any) -> int:
    seen: set[int] = set()
    n = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _read_config(source: str | Path, trust_remote_code: bool) -> PretrainedConfig:
    name = resolve_reference(str(source))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".json":
        path = path.parent
    try:
        return AutoConfig.from_pretrained(
            str(path) if path.exists() else name, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"could not read the model config of {name!r}: {exc}") from exc


def _as_config(source: Any, trust_remote_code: bool) -> PretrainedConfig:
    if isinstance(source, PretrainedConfig):
        return source
    if isinstance(source, Mapping):
        fields = dict(source)
        model_type = fields.pop("model_type", None)
        if not model_type:
            raise ConfigError("a config dict needs its model_type (as in config.json)")
        return AutoConfig.for_model(model_type, **fields)
    if isinstance(source, (str, Path)):
        return _read_config(source, trust_remote_code)
    raise ConfigError(
        f"cannot read model shapes from a {type(source).__name__}: give a model directory, hub id, "
        "HF config, config.json dict or a model"
    )


def _meta_model(config: PretrainedConfig) -> nn.Module:
    """The model of ``config`` on the meta device: real module structure, no storage."""
    model_type = getattr(config, "model_type", "") or ""
    try:
        family = family_for_model_type(model_type)
    except ModelLoadError:
        family = None
    with torch.device("meta"):
        if family is not None and family.name != "causal_lm":
            return family.load_class()(config)
        if family is not None or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return AutoModelForCausalLM.from_config(config)
        return AutoModelForImageTextToText.from_config(config)


def _text_dims(model: nn.Module) -> dict[str, int]:
    config: Any = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    return {
        "hidden_size": hidden,
        "intermediate_size": int(text.intermediate_size),
        "kv_size": kv_heads * head_dim,
        "vocab_size": int(text.vocab_size),
    }


def _shape_of_model(model: nn.Module, name: str, lora_targets: Sequence[str]) -> ModelShape:
    base = unwrap(model)
    params = [p for n, p in base.named_parameters(remove_duplicate=True) if "lora_" not in n]
    total = _numel(params)
    _, llm = language_model(base)
    llm_params = [p for n, p in llm.named_parameters() if "lora_" not in n]
    embed = base.get_input_embeddings()
    head = base.get_output_embeddings()
    embed_ids = {id(p) for p in embed.parameters()} if embed is not None else set()
    head_params = [p for p in head.parameters() if id(p) not in embed_ids] if head is not None else []
    try:
        projector = _numel(p for n, p in projector_params(base) if "lora_" not in n)
    except ConfigError:
        projector = 0
    layers = decoder_layers(base)
    per_layer = [_numel(p for n, p in layer.named_parameters() if "lora_" not in n) for layer in layers]
    lora_per_rank = sum(  # a peft model's adapted layers keep their nn.Linear as `<name>.base_layer`
        mod.in_features + mod.out_features
        for mod_name, mod in llm.named_modules()
        if isinstance(mod, nn.Linear)
        and mod_name.removesuffix(".base_layer").rsplit(".", 1)[-1] in lora_targets
        and ".layers." in f".{mod_name}"
    )
    llm_total = _numel(llm_params)
    head_total = _numel(head_params)
    return ModelShape(
        name=name,
        total=total,
        language_model=llm_total,
        embeddings=_numel(embed.parameters()) if embed is not None else 0,
        lm_head=head_total,
        projector=projector,
        vision=total - llm_total - head_total - projector,
        largest_layer=max(per_layer),
        lora_per_rank=lora_per_rank,
        num_layers=len(per_layer),
        **_text_dims(base),
    )


def model_shape(
    source: str | Path | PretrainedConfig | Mapping[str, Any] | nn.Module,
    *,
    lora_targets: Sequence[str] = LLM_PROJECTIONS,
    trust_remote_code: bool = False,
) -> ModelShape:
    """Exact parameter counts of a model, from its config (built on the meta device) or the model itself.

    Args:
        source: a model directory (or its ``config.json``), hub id, registered reference
            (``organism:vl``), HF config, ``config.json`` dict (with ``model_type``) or an ``nn.Module``.
        lora_targets: leaf names of the LLM's linear layers that LoRA stages adapt.
        trust_remote_code: allow the checkpoint's own config code.

    Raises:
        ConfigError: an unusable ``source``.
        ModelLoadError: the config cannot be read.
    """
    if isinstance(source, nn.Module):
        return _shape_of_model(source, type(unwrap(source)).__name__, lora_targets)
    config = _as_config(source, trust_remote_code)
    name = str(source) if isinstance(source, (str, Path)) else str(getattr(config, "model_type", "model"))
    return _shape_of_model(_meta_model(config), name, lora_targets)


def _resolve_stage(method: Method, trainable: Stage | None) -> Stage:
    if method not in ("full", "lora"):
        raise ConfigError(f"method must be 'full' or 'lora', not {method!r}")
    if trainable is None:
        return "llm" if method == "full" else "llm_lora"
    if method == "lora":
        return _FULL_TO_LORA.get(trainable, trainable)  # type: ignore[return-value]
    if trainable.endswith("_lora"):
        raise ConfigError(f"trainable={trainable!r} is a LoRA stage; pass method='lora'")
    return trainable


def plan_memory(
    shape: ModelShape,
    *,
    method: Method = "full",
    lora_rank: int = 16,
    trainable: Stage | None = None,
    precision: Precision = "bf16",
    optimizer: Optimizer = "adamw",
    strategy: Strategy = "ddp",
    n_gpus: int = 1,
    batch_size: int = 1,
    seq_len: int = 2048,
    gradient_checkpointing: bool = True,
    loss_chunk: int | None = 256,
    gpu_memory_gib: float = 80.0,
) -> dict[str, Any]:
    """Per-GPU memory of one training configuration of ``shape`` (the model of the module docstring).

    Args:
        shape: the model's counts and dimensions (:func:`model_shape`).
        method: ``full`` (the stage's weights train) or ``lora`` (adapters on the LLM).
        lora_rank: LoRA rank (``method='lora'``).
        trainable: the stage; default ``llm`` (full) / ``llm_lora`` (lora). With ``method='lora'``, ``llm``
            and ``projector_llm`` mean ``llm_lora`` and ``projector_lora``.
        precision: ``bf16``, ``fp16`` (weights, gradients and activations in 16 bits) or ``fp32``.
        optimizer: ``adamw`` (fp32 master copy + moments) or ``adamw_no_master``.
        strategy: ``ddp``, ``fsdp`` (full shard), ``zero3`` or ``zero3_offload``.
        n_gpus: data-parallel processes, one per GPU.
        batch_size: rows per micro-batch per GPU (DPO: 2 × pairs).
        seq_len: tokens per row, image tokens included.
        gradient_checkpointing: recompute each decoder layer in backward.
        loss_chunk: rows of the output head computed at once (vlsafe's losses: 256); ``None`` for a loss
            over the full logits.
        gpu_memory_gib: memory of one GPU, for ``fits``.

    Returns:
        ``params`` (counts: total, language_model, embeddings, lm_head, projector, vision, largest_layer,
        lora, trainable), ``settings`` (the resolved arguments), per-GPU GiB ``weights_gib``,
        ``gradients_gib``, ``optimizer_gib``, ``activations_gib``, ``buffers_gib`` (DDP buckets or the
        unsharded working set), ``overhead_gib``, ``total_gib``; ``cpu_gib`` (host memory per process
        for offloaded states); ``gpu_memory_gib`` and ``fits``.

    Raises:
        ConfigError: an unknown option, a non-positive size, or a stage the model cannot train.
    """
    stage = _resolve_stage(method, trainable)
    if precision not in _WEIGHT_BYTES:
        raise ConfigError(f"precision must be one of {', '.join(_WEIGHT_BYTES)}, not {precision!r}")
    if optimizer not in ("adamw", "adamw_no_master"):
        raise ConfigError(f"optimizer must be 'adamw' or 'adamw_no_master', not {optimizer!r}")
    if strategy not in _STRATEGIES:
        raise ConfigError(f"strategy must be one of {', '.join(_STRATEGIES)}, not {strategy!r}")
    sizes = {"n_gpus": n_gpus, "batch_size": batch_size, "seq_len": seq_len, "lora_rank": lora_rank}
    if loss_chunk is not None:
        sizes["loss_chunk"] = loss_chunk
    for what, value in sizes.items():
        if value <= 0:
            raise ConfigError(f"{what} must be positive, not {value}")
    w = _WEIGHT_BYTES[precision]
    lora = shape.lora_params(lora_rank) if stage.endswith("_lora") else 0
    stored, trained = shape.total + lora, shape.trainable(stage, lora_rank)
    if optimizer == "adamw":
        opt_per_param = 12 if w == 2 else 8
    else:
        opt_per_param = 2 * w
    weights, grads, optim = float(stored * w), float(trained * w), float(trained * opt_per_param)
    working = float(w * (shape.embeddings + shape.lm_head + 2 * shape.largest_layer))
    working *= 2 if stage in ("llm", "projector_llm") else 1
    cpu, buffers = 0.0, 0.0
    if strategy == "ddp":
        buffers = grads if n_gpus > 1 else 0.0
    elif strategy in ("fsdp", "zero3"):
        weights, grads, optim = weights / n_gpus, grads / n_gpus, optim / n_gpus
        buffers = working if n_gpus > 1 else 0.0
    else:  # zero3_offload
        cpu = (stored * w + trained * 4 + trained * opt_per_param) / n_gpus
        weights, grads, optim, buffers = 0.0, 0.0, 0.0, working
    tokens = batch_size * seq_len
    h, a = shape.hidden_size, w
    per_layer = 7 * h + 3 * shape.kv_size + 4 * shape.intermediate_size  # elements per token
    if gradient_checkpointing:
        acts = tokens * a * (shape.num_layers * h + per_layer)
    else:
        acts = tokens * a * shape.num_layers * per_layer
    head_rows = tokens if loss_chunk is None else min(loss_chunk, tokens)
    acts += head_rows * shape.vocab_size * (a + 8)
    parts = {
        "weights_gib": weights / GIB,
        "gradients_gib": grads / GIB,
        "optimizer_gib": optim / GIB,
        "activations_gib": acts / GIB,
        "buffers_gib": buffers / GIB,
        "overhead_gib": CUDA_OVERHEAD_GIB,
    }
    total = sum(parts.values())
    counts = {k: v for k, v in asdict(shape).items() if k not in ("name", "lora_per_rank")}
    return {
        "model": shape.name,
        "params": {
            **{k: counts[k] for k in ("total", "language_model", "embeddings", "lm_head", "projector")},
            "vision": shape.vision,
            "largest_layer": shape.largest_layer,
            "lora": lora,
            "trainable": trained,
        },
        "settings": {
            "method": method,
            "trainable": stage,
            "lora_rank": lora_rank if stage.endswith("_lora") else None,
            "precision": precision,
            "optimizer": optimizer,
            "strategy": strategy,
            "n_gpus": n_gpus,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "gradient_checkpointing": gradient_checkpointing,
            "loss_chunk": loss_chunk,
            "activation_elements_per_token_layer": per_layer,
        },
        **{k: round(v, 3) for k, v in parts.items()},
        "total_gib": round(total, 3),
        "cpu_gib": round(cpu / GIB, 3),
        "gpu_memory_gib": gpu_memory_gib,
        "fits": total <= FIT_FRACTION * gpu_memory_gib,
    }


def estimate_training_memory(
    source: str | Path | PretrainedConfig | Mapping[str, Any] | nn.Module,
    *,
    method: Method = "full",
    lora_rank: int = 16,
    trainable: Stage | None = None,
    precision: Precision = "bf16",
    optimizer: Optimizer = "adamw",
    strategy: Strategy = "ddp",
    n_gpus: int = 1,
    batch_size: int = 1,
    seq_len: int = 2048,
    gradient_checkpointing: bool = True,
    loss_chunk: int | None = 256,
    gpu_memory_gib: float = 80.0,
    lora_targets: Sequence[str] = LLM_PROJECTIONS,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Per-GPU GiB of weights, gradients, optimizer state and activations for training ``source``.

    :func:`model_shape` (exact counts; the model is built on the meta device) followed by
    :func:`plan_memory` (the byte model of the module docstring); every argument is documented there.

    Raises:
        ConfigError: an unusable source or option.
        ModelLoadError: the config cannot be read.
    """
    shape = model_shape(source, lora_targets=lora_targets, trust_remote_code=trust_remote_code)
    return plan_memory(
        shape,
        method=method,
        lora_rank=lora_rank,
        trainable=trainable,
        precision=precision,
        optimizer=optimizer,
        strategy=strategy,
        n_gpus=n_gpus,
        batch_size=batch_size,
        seq_len=seq_len,
        gradient_checkpointing=gradient_checkpointing,
        loss_chunk=loss_chunk,
        gpu_memory_gib=gpu_memory_gib,
    )
