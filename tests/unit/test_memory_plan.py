"""The training-memory estimator (exact parameter counts from meta-device models, the byte arithmetic, ZeRO-3
scaling) and the shipped distributed-training configs: accelerate files and the 7B recipes."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.baseline import load_config
from vlsafe.methods.training.dpo import DPOConfig
from vlsafe.methods.training.memory_plan import (
    CUDA_OVERHEAD_GIB,
    ModelShape,
    estimate_training_memory,
    model_shape,
    plan_memory,
)
from vlsafe.methods.training.sft import SFTConfig
from vlsafe.methods.training.stages import (
    LoraSettings,
    Stage,
    apply_stage,
    language_model,
    projector_params,
)
from vlsafe.methods.training.tga import load_tga_config
from vlsafe.models import ModelBundle
from vlsafe.models.tiny import TINY_FAMILIES, VLM_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "configs" / "recipes" / "shapes"
ACCELERATE = ROOT / "configs" / "accelerate"
G = 2**30


def _n(params) -> int:  # type: ignore[no-untyped-def]
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_counts_from_the_config_equal_the_loaded_model(
    family: str, tiny_dir: Callable[[str], Path], tiny_bundle: Callable[[str], ModelBundle]
) -> None:
    shape = model_shape(tiny_dir(family))  # built on the meta device from config.json
    model = tiny_bundle(family).model
    assert shape.total == _n(model.parameters())
    _, llm = language_model(model)
    assert shape.language_model == _n(llm.parameters())
    assert shape.embeddings == _n(model.get_input_embeddings().parameters())
    assert shape.projector == (_n(p for _, p in projector_params(model)) if family in VLM_FAMILIES else 0)
    assert shape.vision == shape.total - shape.language_model - shape.lm_head - shape.projector
    layers = tiny_bundle(family).layers
    assert shape.num_layers == len(layers)
    assert shape.largest_layer == max(_n(layer.parameters()) for layer in layers)
    assert model_shape(model) == ModelShape(**{**shape.__dict__, "name": type(model).__name__})


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_trainable_counts_equal_apply_stage(family: str, tiny_bundle: Callable[[str], ModelBundle]) -> None:
    model = tiny_bundle(family).model
    shape = model_shape(model)
    stages: list[Stage] = ["llm", "llm_lora"]
    if family in VLM_FAMILIES:
        stages += ["projector", "projector_llm", "projector_lora"]
    for stage in stages:
        trained = apply_stage(copy.deepcopy(model), stage, LoraSettings(rank=4))
        n_trained = _n(p for p in trained.parameters() if p.requires_grad)
        assert shape.trainable(stage, lora_rank=4) == n_trained, stage
        if stage == "llm_lora":
            assert shape.total + shape.lora_params(4) == _n(trained.parameters())
            assert model_shape(trained) == shape  # a peft model counts as its base model
    if family not in VLM_FAMILIES:
        with pytest.raises(ConfigError, match="has none"):
            shape.trainable("projector")


def test_published_7b_shapes() -> None:
    llava = model_shape(SHAPES / "llava-1.5-7b")
    assert llava.total == 7_063_427_072 and llava.language_model == 6_607_605_760
    assert llava.vision == 303_507_456 and llava.projector == 20_979_712 and llava.lm_head == 32064 * 4096
    assert (llava.num_layers, llava.hidden_size, llava.intermediate_size) == (32, 4096, 11008)
    assert llava.kv_size == 4096 and llava.vocab_size == 32064
    assert llava.largest_layer == 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert llava.lora_per_rank == 32 * (4 * 2 * 4096 + 3 * (4096 + 11008))
    qwen = model_shape(SHAPES / "qwen2-vl-7b" / "config.json")
    assert qwen.total == 8_291_375_616 and qwen.kv_size == 4 * 128
    as_dict = json.loads((SHAPES / "llava-1.5-7b" / "config.json").read_text())
    assert model_shape(as_dict).total == llava.total


def _shape() -> ModelShape:
    """Round numbers: 3 Gi parameters, so bytes per parameter read as GiB."""
    return ModelShape(
        name="hand",
        total=3 * G,
        language_model=2 * G,
        embeddings=G // 4,
        lm_head=G // 4,
        projector=G // 8,
        vision=5 * G // 8,
        largest_layer=G // 16,
        lora_per_rank=2**20,
        num_layers=10,
        hidden_size=1024,
        intermediate_size=2048,
        kv_size=512,
        vocab_size=1000,
    )


def test_bytes_on_a_hand_computed_case() -> None:
    shape = _shape()
    full = plan_memory(shape, trainable="projector_llm", batch_size=2, seq_len=1024)
    trained = G // 8 + 2 * G - G // 4  # projector + LLM without its input embeddings
    assert full["params"]["trainable"] == trained
    assert full["weights_gib"] == 6.0  # 3 Gi params x 2 B (bf16)
    assert full["gradients_gib"] == 3.75  # 15/8 Gi trained x 2 B
    assert full["optimizer_gib"] == 22.5  # x 12 B: fp32 master, first and second moment
    assert full["buffers_gib"] == 0.0  # one GPU: no DDP buckets
    per_layer = 7 * 1024 + 3 * 512 + 4 * 2048  # elements per token kept by one decoder layer
    tokens = 2 * 1024
    head = 256 * 1000 * (2 + 8)  # 256 rows of logits at a time: bf16, fp32 copy, fp32 log-softmax
    checkpointed = tokens * 2 * (10 * 1024 + per_layer) + head
    assert full["activations_gib"] == round(checkpointed / G, 3)
    assert full["total_gib"] == pytest.approx(
        6 + 3.75 + 22.5 + checkpointed / G + CUDA_OVERHEAD_GIB, abs=1e-3
    )
    assert full["fits"] is True and full["cpu_gib"] == 0.0

    no_ckpt = plan_memory(
        shape, trainable="projector_llm", batch_size=2, seq_len=1024, gradient_checkpointing=False
    )
    assert no_ckpt["activations_gib"] == round((tokens * 2 * 10 * per_layer + head) / G, 3)
    stock_loss = plan_memory(shape, trainable="projector_llm", batch_size=2, seq_len=1024, loss_chunk=None)
    assert stock_loss["activations_gib"] == round((checkpointed - head + tokens * 1000 * 10) / G, 3)

    ddp2 = plan_memory(shape, method="lora", lora_rank=16, n_gpus=2)
    assert ddp2["settings"]["trainable"] == "llm_lora" and ddp2["params"]["lora"] == G // 64
    assert ddp2["weights_gib"] == 6.031  # (3 + 1/64) Gi x 2 B
    assert ddp2["gradients_gib"] == ddp2["buffers_gib"] == 0.031  # 1/64 Gi x 2 B, and DDP's buckets
    assert ddp2["optimizer_gib"] == 0.188  # 1/64 Gi x 12 B

    zero3 = plan_memory(shape, trainable="projector_llm", strategy="zero3", n_gpus=4)
    assert (zero3["weights_gib"], zero3["gradients_gib"], zero3["optimizer_gib"]) == (1.5, 0.938, 5.625)
    assert zero3["buffers_gib"] == 2.5  # (1/4 + 1/4 + 2/16) Gi x 2 B, doubled for their gradients

    offload = plan_memory(shape, trainable="llm", strategy="zero3_offload", n_gpus=2)
    assert offload["weights_gib"] == offload["gradients_gib"] == offload["optimizer_gib"] == 0.0
    assert offload["cpu_gib"] == 17.0  # (3 Gi x 2 B + 7/4 Gi x (4 B fp32 grads + 12 B Adam)) / 2
    assert offload["buffers_gib"] == 2.5

    fp32 = plan_memory(shape, trainable="llm", precision="fp32")
    assert (fp32["weights_gib"], fp32["gradients_gib"], fp32["optimizer_gib"]) == (12.0, 7.0, 14.0)
    assert plan_memory(shape, trainable="llm", optimizer="adamw_no_master")["optimizer_gib"] == 7.0
    assert plan_memory(shape, trainable="llm", gpu_memory_gib=24)["fits"] is False


def test_zero3_divides_states_by_the_gpu_count() -> None:
    llava = model_shape(SHAPES / "llava-1.5-7b")
    plans = {
        n: plan_memory(llava, trainable="projector_llm", strategy="zero3", n_gpus=n, batch_size=4)
        for n in (2, 4, 8)
    }
    one = plan_memory(llava, trainable="projector_llm", strategy="zero3", n_gpus=1, batch_size=4)
    for n, plan in plans.items():
        for key in ("weights_gib", "gradients_gib", "optimizer_gib"):
            assert plan[key] == pytest.approx(one[key] / n, abs=1e-3)
        assert (
            plan["activations_gib"] == one["activations_gib"]
            and plan["buffers_gib"] == plans[2]["buffers_gib"]
        )
    ddp = [
        plan_memory(llava, trainable="projector_llm", n_gpus=n, batch_size=4)["optimizer_gib"] for n in (1, 8)
    ]
    assert ddp[0] == ddp[1] == one["optimizer_gib"]
    assert not one["fits"] and plans[8]["fits"]
    offload = [
        plan_memory(llava, trainable="projector_llm", strategy="zero3_offload", n_gpus=n, batch_size=4)
        for n in (1, 8)
    ]
    assert offload[0]["cpu_gib"] == pytest.approx(8 * offload[1]["cpu_gib"], abs=1e-2)


def test_estimate_reads_a_model_directory(tiny_dir: Callable[[str], Path]) -> None:
    plan = estimate_training_memory(tiny_dir("llava"), method="lora", lora_rank=8, strategy="fsdp", n_gpus=2)
    shape = model_shape(tiny_dir("llava"))
    assert plan["params"]["trainable"] == shape.lora_params(8) and plan["settings"]["strategy"] == "fsdp"
    assert plan == plan_memory(shape, method="lora", lora_rank=8, strategy="fsdp", n_gpus=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "full", "trainable": "llm_lora"}, "pass method='lora'"),
        ({"strategy": "zero2"}, "strategy must be one of"),
        ({"precision": "int8"}, "precision must be one of"),
        ({"optimizer": "sgd"}, "optimizer must be"),
        ({"n_gpus": 0}, "n_gpus must be positive"),
        ({"trainable": "vision"}, "unknown stage"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_memory(_shape(), **kwargs)


def test_bad_sources_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="model_type"):
        model_shape({"hidden_size": 8})
    with pytest.raises(ConfigError, match="cannot read model shapes"):
        model_shape(42)  # type: ignore[arg-type]


# -- the shipped configs ---------------------------------------------------------------------------------


def test_accelerate_configs_load_with_accelerate() -> None:
    configs = {p.stem: load_config_from_file(str(p)) for p in sorted(ACCELERATE.glob("*.yaml"))}
    assert set(configs) == {"ddp", "fsdp", "zero3", "zero3_offload", "cpu2"}
    assert configs["ddp"].distributed_type == "MULTI_GPU" and configs["ddp"].mixed_precision == "bf16"
    fsdp = configs["fsdp"]
    assert fsdp.distributed_type == "FSDP" and fsdp.mixed_precision == "bf16"
    assert fsdp.fsdp_config["fsdp_version"] == 2 and fsdp.fsdp_config["fsdp_reshard_after_forward"] is True
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp.fsdp_config["fsdp_activation_checkpointing"] is False  # the trainer checkpoints
    for name, device in (("zero3", "none"), ("zero3_offload", "cpu")):
        ds = configs[name]
        assert ds.distributed_type == "DEEPSPEED" and ds.mixed_precision == "bf16"
        assert ds.deepspeed_config["zero_stage"] == 3 and ds.deepspeed_config["zero3_init_flag"] is True
        assert (
            ds.deepspeed_config["offload_optimizer_device"]
            == ds.deepspeed_config["offload_param_device"]
            == device
        )
        # batch, accumulation and clipping come from the training config ("auto" in DeepSpeed's config)
        assert not {"gradient_accumulation_steps", "gradient_clipping"} & set(ds.deepspeed_config)
    cpu = configs["cpu2"]
    assert cpu.use_cpu is True and cpu.num_processes == 2 and cpu.mixed_precision == "no"


def test_recipes_validate_against_the_training_configs() -> None:
    recipes = ROOT / "configs" / "recipes"
    tga = load_tga_config(recipes / "tga_llava15_7b.yaml")
    stages = tga.stage_configs()
    assert [(s.stage, s.lr) for s in stages] == [("projector", 1e-3), ("projector_llm", 2e-6)]
    assert tga.guide.layers == list(range(9, 18))  # the released hidden states 10-18 are layer outputs 9-17
    assert all(s.mixed_precision == "bf16" for s in stages) and stages[1].gradient_checkpointing
    sft = load_config(SFTConfig, recipes / "sft_llava15_7b.yaml")
    dpo = load_config(DPOConfig, recipes / "dpo_llava15_7b.yaml")
    assert sft.data[0].format == "vlguard" and dpo.data[0].format == "spavl"
    for path in recipes.glob("*.yaml"):
        assert yaml.safe_load(path.read_text())["dtype"] == "bfloat16", path
