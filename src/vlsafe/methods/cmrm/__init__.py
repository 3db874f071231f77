"""vlsafe.methods.cmrm: Cross-Modality Representation Manipulation (inference-time steering toward text-only states).

Typical use::

    from vlsafe.methods.cmrm import calibrate, cmrm_steer, SampleLevelCMRM

    vec = calibrate(bundle, anchors, corrupt="image")        # dataset level: one vector per layer
    with cmrm_steer(bundle, vec, alpha=1.0):                   # layers="middle", delta=True by default
        out = bundle.model.generate(**batch.inputs)
    with SampleLevelCMRM(bundle, alpha=1.0) as cmrm:           # sample level: a vector per input
        new_tokens = cmrm.generate(queries, images=images, max_new_tokens=64)

Sign convention: ``v_l = h_l(text only) - h_l(query + corrupted image)``; ``alpha > 0`` moves multimodal
states toward text-only states. The default layer choice is open (see :mod:`vlsafe.methods.cmrm.apply`).
"""

from vlsafe.methods.cmrm.anchors import (
    anchor_items,
    anchors_hash,
    heldout_ids,
    heldout_split,
    load_anchor_spec,
)
from vlsafe.methods.cmrm.apply import (
    ApplyOptions,
    cmrm_steer,
    middle_band,
    prepare_vector,
    resolve_steer_layers,
)
from vlsafe.methods.cmrm.calibrate import (
    CORRUPTIONS,
    SIGN_CONVENTION,
    calibrate,
    check_compatible,
    corrupted_images,
    variant_differences,
)
from vlsafe.methods.cmrm.cli_support import run_calibrate, run_cmrm_eval, run_sweep_cli
from vlsafe.methods.cmrm.intervention import CMRMIntervention, vector_hash
from vlsafe.methods.cmrm.sample import SampleLevelCMRM
from vlsafe.methods.cmrm.sweep import SweepConfig, default_alphas, run_sweep

__all__ = [
    "CORRUPTIONS",
    "SIGN_CONVENTION",
    "ApplyOptions",
    "CMRMIntervention",
    "SampleLevelCMRM",
    "SweepConfig",
    "anchor_items",
    "anchors_hash",
    "calibrate",
    "check_compatible",
    "cmrm_steer",
    "corrupted_images",
    "default_alphas",
    "heldout_ids",
    "heldout_split",
    "load_anchor_spec",
    "middle_band",
    "prepare_vector",
    "resolve_steer_layers",
    "run_calibrate",
    "run_cmrm_eval",
    "run_sweep",
    "run_sweep_cli",
    "variant_differences",
    "vector_hash",
]
