"""Named sets of CMRM choices: ``paper`` (the default) and ``band``.

A preset fills every CMRM option a config leaves unset (:func:`fill_preset`); an option given explicitly always
wins. Where each choice of the ``paper`` preset comes from (paper: arXiv 2410.09047, "Unraveling and Mitigating
Safety Alignment Degradation of Vision-Language Models", Findings of ACL 2025; it ships no code):

=====================  ===================  ==============================================================
choice                 ``paper``            source
=====================  ===================  ==============================================================
``corrupt`` (img′)     ``blank``            paper: the shift is measured against the query with a
                                            *meaningless* image; which one (blank or noise, both offered)
                                            is vlsafe's pick: blank
shift                  Δ = mean(h(x, img′)  paper: dataset level (mean over an anchor set) and sample
                       − h(x))              level (the input's own difference). vlsafe stores
                                            ``v = −Δ`` and adds ``α·v`` (the paper's equations disagree on
                                            the sign; vlsafe's is tested: α > 0 moves toward text-only)
``reduce``             ``mean``             paper (the first principal component is vlsafe's option)
``vector_positions``   ``last``             reading of the paper (design notes §5.2): the paper does not
                                            say where the states are read; the last prompt position
``layers``             ``all``              paper: the vector is added at every decoder layer
``delta``              ``False``            paper: each layer gets its own Δ_l; per-layer increments
                                            Δ_l − Δ_(l−1) are vlsafe's option
``positions``          ``all``              reading of the paper (design notes §5.2): every position of
                                            the prompt and of the generated tokens
``when``               ``every``            same reading: prefill and every decoded token (the vector,
                                            measured at the prompt's last position, is reused there)
``norm_scale``         ``False``            paper (norm scaling is vlsafe's option)
alphas                 0, 0.1, ..., 1       paper: α swept in [0, 1] in steps of 0.1
levels                 dataset, sample      paper: both levels are reported
=====================  ===================  ==============================================================

The ``band`` preset is vlsafe's own earlier default (the anchor's own image, the middle band
``[L/4, L/2)`` with per-layer increments), kept by name for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationInfo

from vlsafe.core.errors import ConfigError

__all__ = ["PRESETS", "PRESET_NAMES", "PresetName", "fill_preset", "named_choice", "preset_alphas"]

PresetName = Literal["paper", "band"]
PRESET_NAMES = ("paper", "band")

_ALPHAS = [round(i * 0.1, 4) for i in range(11)]

#: Every preset's choices: the calibration / per-input vector (``corrupt``, ``vector_positions``, ``reduce``), the
#: application options (``apply``: the fields of :class:`~vlsafe.methods.cmrm.ApplyOptions`) and the sweep
#: (``alphas``, ``levels``).
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "corrupt": "blank",
        "vector_positions": "last",
        "reduce": "mean",
        "apply": {"layers": "all", "delta": False, "positions": "all", "when": "every", "norm_scale": False},
        "alphas": _ALPHAS,
        "levels": ["dataset", "sample"],
    },
    "band": {
        "corrupt": "image",
        "vector_positions": "last",
        "reduce": "mean",
        "apply": {"layers": "middle", "delta": True, "positions": "all", "when": "every", "norm_scale": False},
        "alphas": _ALPHAS,
        "levels": ["dataset", "sample"],
    },
}


def _preset(name: Any) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r} is not one of {', '.join(PRESET_NAMES)}")
    return PRESETS[str(name)]


def preset_alphas(name: str) -> list[float]:
    """The α grid of a preset's sweep."""
    return list(_preset(name)["alphas"])


def fill_preset(
    data: Any, keys: Mapping[str, str], *, apply_key: str | None = None, default: str = "paper"
) -> Any:
    """Fill the unset fields of a config's raw input ``data`` from its ``preset`` (pydantic ``before`` validator).

    Args:
        data: the raw input (a mapping; anything else is returned as is for the model to reject).
        keys: config field -> preset key, for the plain fields this config has.
        apply_key: the config field holding :class:`~vlsafe.methods.cmrm.ApplyOptions` (filled key by key).
        default: the preset when ``data`` names none.
    """
    if not isinstance(data, Mapping):
        return data
    out = dict(data)
    preset = _preset(out.get("preset", default))
    for field, key in keys.items():
        if out.get(field) is None and key in preset:
            out[field] = preset[key]
    if apply_key is not None:
        given = out.get(apply_key)
        if isinstance(given, BaseModel):
            given = given.model_dump(exclude_unset=True)
        if isinstance(given, Mapping) or given is None:
            apply = dict(given or {})
            if not ({"when", "prefill_only"} & set(apply)):
                apply["when"] = preset["apply"]["when"]
            for key, value in preset["apply"].items():
                apply.setdefault(key, value)
            out[apply_key] = apply
    return out


def named_choice(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A ``before`` field validator for ``Literal`` fields whose error names the value given and the allowed ones
    (pydantic's own names only the allowed ones)."""
    name = info.field_name or "value"
    annotation = model.model_fields[name].annotation
    allowed: list[Any] = []
    for member in (annotation, *get_args(annotation)):
        if get_origin(member) is Literal:
            allowed.extend(get_args(member))
    if allowed and value is not None and value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")
    return value
