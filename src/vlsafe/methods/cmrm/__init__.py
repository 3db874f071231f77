"""vlsafe.methods.cmrm: Cross-Modality Representation Manipulation (inference-time steering toward text-only states).

Typical use::

    from vlsafe.methods.cmrm import calibrate, cmrm_steer, SampleLevelCMRM

    vec = calibrate(bundle, anchors, corrupt="image")        # dataset level: one vector per layer
    with cmrm_steer(bundle, vec, alpha=1.0):                   # layers="middle", delta=True by default
        out = bundle.model.generate(**batch.inputs)
    with SampleLevelCMRM(bundle, alpha=1.0) as cmrm:           # sample level: a vector per input
        new_tokens = cmrm.generate(queries, images=images, max_new_tokens=64)

From configs (the functions behind ``vlsafe cmrm calibrate``, ``vlsafe eval --cmrm`` and ``vlsafe cmrm sweep``)::

    run_calibrate(CalibrateConfig(model=m, anchors="strongreject", out="vec.safetensors"))
    run_cmrm_eval(CMRMEvalConfig(model=m, benchmark="strongreject", cmrm="vec.safetensors"), "runs/cmrm")
    run_sweep(SweepConfig(model=m, cmrm=vec, safety=["strongreject"], utility=["my_val"],
                          role_max_new_tokens={"utility": 8}), "sweep/", bundle=bundle)

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
from vlsafe.methods.cmrm.config import CalibrateConfig, CMRMEvalConfig, CMRMSettings, VectorRef
from vlsafe.methods.cmrm.intervention import CMRMIntervention, vector_hash
from vlsafe.methods.cmrm.run import anchor_ids_of, load_vector, run_calibrate, run_cmrm_eval
from vlsafe.methods.cmrm.sample import SampleLevelCMRM
from vlsafe.methods.cmrm.sweep import ROLE_METRIC, SweepConfig, default_alphas, run_sweep

__all__ = [
    "CORRUPTIONS",
    "ROLE_METRIC",
    "SIGN_CONVENTION",
    "ApplyOptions",
    "CMRMEvalConfig",
    "CMRMIntervention",
    "CMRMSettings",
    "CalibrateConfig",
    "SampleLevelCMRM",
    "SweepConfig",
    "VectorRef",
    "anchor_ids_of",
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
    "load_vector",
    "middle_band",
    "prepare_vector",
    "resolve_steer_layers",
    "run_calibrate",
    "run_cmrm_eval",
    "run_sweep",
    "variant_differences",
    "vector_hash",
]
