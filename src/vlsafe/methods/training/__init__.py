"""vlsafe.methods.training: a training engine on ``transformers.Trainer``, TGA (text-guided alignment) with
retrieval, and the safety SFT / DPO baselines.

Engine (shared; :mod:`vlsafe.methods.training.engine`): :class:`TrainConfig` and its mapping to
``TrainingArguments`` (:func:`trainer_args`), :class:`EngineMixin` (seeded data order, warm-up schedule,
whole-or-absent safetensors checkpoints, resume checks, per-step log, vlsafe callbacks) for any
``transformers.Trainer`` subclass, :class:`Trainer` (the front end: stage, engine, ``train()``),
:class:`LossOutput`, stages (:func:`apply_stage`) and memory planning (:func:`plan_memory`). TGA: :class:`TGAConfig`, :func:`run_tga`,
:class:`TGALoss`, retrieval (:func:`retrieval_prompt`, :class:`BM25Retriever`) and inference with retrieval
(:func:`generate_with_retrieval`). Baselines: :class:`SFTConfig` / :func:`run_sft`, :class:`DPOConfig` /
:func:`run_dpo`.
"""

from vlsafe.methods.training.baseline import BaselineConfig, export_model, load_config, run_baseline
from vlsafe.methods.training.callbacks import (
    CURVE_KEYS,
    ProbeSettings,
    SafetyTracker,
    build_probe,
    curve_figure,
    read_curve,
)
from vlsafe.methods.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_trainable,
    save_checkpoint,
    save_trained_model,
    trainable_state,
)
from vlsafe.methods.training.data import TGABatch, TGARecord, encode_tga_batch, read_tga_records
from vlsafe.methods.training.dpo import (
    DPOConfig,
    DPOObjective,
    dpo_collate,
    dpo_reference,
    dpo_trainer,
    run_dpo,
)
from vlsafe.methods.training.encoding import (
    EncodedBatch,
    GroupedBatch,
    encode_batch,
    modality_groups,
    reply_suffix,
)
from vlsafe.methods.training.engine import (
    RESUME_FREE_FIELDS,
    EngineMixin,
    LossFnTrainer,
    SeededSampler,
    check_resume_config,
    clean_partial_checkpoints,
    config_difference,
    lr_lambda,
    resume_checkpoint,
    trainer_args,
)
from vlsafe.methods.training.losses import DPOLossOutput, dpo_loss, sequence_logps
from vlsafe.methods.training.memory_plan import (
    CUDA_OVERHEAD_GIB,
    FIT_FRACTION,
    ModelShape,
    estimate_training_memory,
    model_shape,
    plan_memory,
)
from vlsafe.methods.training.mixing import DataSource, MixSettings, load_source, mix_records
from vlsafe.methods.training.sft import SFTConfig, run_sft, sft_collate, sft_loss, sft_records, sft_trainer
from vlsafe.methods.training.stages import (
    LLM_PROJECTIONS,
    LoraSettings,
    Stage,
    apply_stage,
    language_model,
    lora_target_regex,
    projector_params,
    unwrap,
)
from vlsafe.methods.training.tga import (
    GuideConfig,
    RetrievalConfig,
    TGAConfig,
    attach_retrieved,
    check_tga_resume,
    guided_layers,
    load_tga_config,
    rebuild_trained_model,
    run_tga,
    train_tga,
)
from vlsafe.methods.training.tga_loss import (
    TGALoss,
    TGATrainer,
    guide_terms,
    layer_outputs,
    masked_mean,
    middle_third,
    supervised_ce,
    tga_loss_terms,
)
from vlsafe.methods.training.trainer import LossFn, LossOutput, TrainConfig, Trainer, TrainResult
from vlsafe.methods.training.trl_data import DPOCollator, SFTCollator, preference_dataset, sft_dataset
from vlsafe.methods.training.trl_trainers import SafetyDPOTrainer, SafetySFTTrainer
from vlsafe.methods.training.vl_safety_gen import (
    COMPLIANCE_OPENERS,
    generate_spavl,
    generate_vlguard,
    synthetic_vl_records,
)

__all__ = [
    # engine
    "EngineMixin",
    "LossFnTrainer",
    "SeededSampler",
    "RESUME_FREE_FIELDS",
    "check_resume_config",
    "clean_partial_checkpoints",
    "config_difference",
    "resume_checkpoint",
    "lr_lambda",
    "trainer_args",
    "CUDA_OVERHEAD_GIB",
    "FIT_FRACTION",
    "ModelShape",
    "estimate_training_memory",
    "model_shape",
    "plan_memory",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "LossOutput",
    "LossFn",
    "LLM_PROJECTIONS",
    "LoraSettings",
    "Stage",
    "apply_stage",
    "projector_params",
    "language_model",
    "lora_target_regex",
    "unwrap",
    "save_checkpoint",
    "load_checkpoint",
    "load_trainable",
    "latest_checkpoint",
    "trainable_state",
    "save_trained_model",
    # TGA
    "TGABatch",
    "TGARecord",
    "encode_tga_batch",
    "read_tga_records",
    "TGALoss",
    "TGATrainer",
    "tga_loss_terms",
    "supervised_ce",
    "guide_terms",
    "layer_outputs",
    "masked_mean",
    "middle_third",
    "GuideConfig",
    "RetrievalConfig",
    "TGAConfig",
    "attach_retrieved",
    "check_tga_resume",
    "rebuild_trained_model",
    "guided_layers",
    "load_tga_config",
    "run_tga",
    "train_tga",
    # safety SFT / DPO baselines
    "BaselineConfig",
    "export_model",
    "load_config",
    "run_baseline",
    "CURVE_KEYS",
    "ProbeSettings",
    "SafetyTracker",
    "build_probe",
    "curve_figure",
    "read_curve",
    "DPOConfig",
    "DPOObjective",
    "dpo_collate",
    "run_dpo",
    "EncodedBatch",
    "GroupedBatch",
    "encode_batch",
    "modality_groups",
    "reply_suffix",
    "DPOLossOutput",
    "dpo_loss",
    "sequence_logps",
    "DataSource",
    "MixSettings",
    "load_source",
    "mix_records",
    "SFTConfig",
    "run_sft",
    "sft_collate",
    "sft_loss",
    "sft_records",
    "COMPLIANCE_OPENERS",
    "generate_spavl",
    "generate_vlguard",
    "synthetic_vl_records",
    "dpo_reference",
    "dpo_trainer",
    "sft_trainer",
    "DPOCollator",
    "SFTCollator",
    "preference_dataset",
    "sft_dataset",
    "SafetyDPOTrainer",
    "SafetySFTTrainer",
]
