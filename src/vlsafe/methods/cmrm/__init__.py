"""vlsafe.methods.cmrm: Cross-Modality Representation Manipulation (inference-time steering toward text-only states).

Typical use::

    from vlsafe.methods.cmrm import calibrate, cmrm_steer, SampleLevelCMRM

    vec = calibrate(bundle, anchors)                  # dataset level: one vector per layer, blank img′
    with cmrm_steer(bundle, vec, alpha=1.0):          # every layer, all positions, prompt and decoded tokens
        out = bundle.model.generate(**batch.inputs)
    with SampleLevelCMRM(bundle, alpha=1.0) as cmrm:  # sample level: a vector per input
        new_tokens = cmrm.generate(queries, images=images, max_new_tokens=64)

The defaults everywhere (functions, configs, ``vlsafe cmrm calibrate``, ``vlsafe eval --cmrm``, ``vlsafe cmrm
sweep``) are the ``paper`` preset; :mod:`vlsafe.methods.cmrm.presets` says where each of its choices comes from
(the paper's text, a reading of it, or vlsafe's own). Every other choice (the input's own image as img′, a layer
band, per-layer increments, the last or text positions, prefill only, norm scaling, PCA) is an option.

From configs (the functions behind ``vlsafe cmrm calibrate``, ``vlsafe eval --cmrm`` and ``vlsafe cmrm sweep``)::

    run_calibrate(CalibrateConfig(model=m, anchors="strongreject", out="vec.safetensors"))
    run_cmrm_eval(CMRMEvalConfig(model=m, benchmark="strongreject", cmrm="vec.safetensors"), "runs/cmrm")
    run_sweep(SweepConfig(model=m, cmrm=vec, safety=["strongreject"], utility=["my_val"],
                          role_max_new_tokens={"utility": 8}), "sweep/", bundle=bundle)
    run_sweep(SweepConfig(model=m, calibration={"anchors": "strongreject"}, safety=["strongreject"],
                          axes={"corrupt": ["blank", "noise", "image"], "layers": ["all", "all:delta", "8-12"]}),
              "sweep/", bundle=bundle)                 # the paper's grid: both levels, α 0..1 by 0.1

Sign convention: ``v_l = h_l(text only) - h_l(query + corrupted image)`` (the paper's Δ with the opposite sign);
``alpha > 0`` moves multimodal states toward text-only states.
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
    steer_hooks,
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
from vlsafe.methods.cmrm.controls import ControlResult, own_image_control
from vlsafe.methods.cmrm.intervention import CMRMIntervention, vector_hash
from vlsafe.methods.cmrm.presets import PRESET_NAMES, PRESETS, fill_preset, preset_alphas
from vlsafe.methods.cmrm.run import anchor_ids_of, load_vector, run_calibrate, run_cmrm_eval
from vlsafe.methods.cmrm.sample import SampleLevelCMRM
from vlsafe.methods.cmrm.steering import STEER_POSITIONS, WHEN, SteerHooks
from vlsafe.methods.cmrm.sweep import (
    ROLE_METRIC,
    SweepAxes,
    SweepCalibration,
    SweepConfig,
    SweepPoint,
    default_alphas,
    parse_layer_choice,
    run_sweep,
)

__all__ = [
    "CORRUPTIONS",
    "PRESETS",
    "PRESET_NAMES",
    "ROLE_METRIC",
    "SIGN_CONVENTION",
    "STEER_POSITIONS",
    "WHEN",
    "ApplyOptions",
    "ControlResult",
    "CMRMEvalConfig",
    "CMRMIntervention",
    "CMRMSettings",
    "CalibrateConfig",
    "SampleLevelCMRM",
    "SteerHooks",
    "SweepAxes",
    "SweepCalibration",
    "SweepConfig",
    "SweepPoint",
    "VectorRef",
    "anchor_ids_of",
    "anchor_items",
    "anchors_hash",
    "calibrate",
    "check_compatible",
    "cmrm_steer",
    "corrupted_images",
    "default_alphas",
    "fill_preset",
    "heldout_ids",
    "heldout_split",
    "load_anchor_spec",
    "load_vector",
    "middle_band",
    "parse_layer_choice",
    "preset_alphas",
    "prepare_vector",
    "resolve_steer_layers",
    "run_calibrate",
    "run_cmrm_eval",
    "own_image_control",
    "run_sweep",
    "steer_hooks",
    "variant_differences",
    "vector_hash",
]
