"""Streaming, VLM-aware, layer-selective weight merging (linear, task arithmetic, TIES, DARE, SLERP).

Python API: ``merge(config, out_dir)``; CLI: ``vlsafe merge CONFIG.yaml --out DIR [--dry-run]``.
Tensor-name mapping between a VLM and its LLM lives in :mod:`vlsafe.methods.merging.names`.
"""

from vlsafe.methods.merging.config import FilterValue, MergeConfig, ModelEntry, resolve_value
from vlsafe.methods.merging.engine import MergeResult, merge, run_merge
from vlsafe.methods.merging.io import CheckpointReader, ShardedWriter
from vlsafe.methods.merging.methods import (
    METHODS,
    MethodSpec,
    generalized_task_arithmetic,
    magnitude_threshold,
    slerp_coefficients,
)
from vlsafe.methods.merging.names import LmLayout, detect_layout, layer_index, llm_name_for, vlm_name_for
from vlsafe.methods.merging.plan import MergePlan, TensorPlan, plan_merge

__all__ = [
    "METHODS",
    "CheckpointReader",
    "FilterValue",
    "LmLayout",
    "MergeConfig",
    "MergePlan",
    "MergeResult",
    "MethodSpec",
    "ModelEntry",
    "ShardedWriter",
    "TensorPlan",
    "detect_layout",
    "generalized_task_arithmetic",
    "layer_index",
    "llm_name_for",
    "magnitude_threshold",
    "merge",
    "plan_merge",
    "resolve_value",
    "run_merge",
    "slerp_coefficients",
    "vlm_name_for",
]
