"""The configs of CMRM's runs: calibration, one evaluation with CMRM, and (shared) how CMRM is applied.

:class:`CMRMSettings` says which CMRM steers and how; :class:`CMRMEvalConfig` is an
:class:`~vlsafe.evals.EvalConfig` with those settings (``vlsafe eval --cmrm``); :class:`CalibrateConfig` is one
calibration (``vlsafe cmrm calibrate``). :class:`~vlsafe.methods.cmrm.SweepConfig` combines the settings with the
evaluation options of :class:`~vlsafe.evals.config.GenerationOptions`.

Each has a ``preset`` (default ``paper``; see :mod:`vlsafe.methods.cmrm.presets` for where each of its choices comes
from) that fills every CMRM option left unset; options given explicitly win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    InstanceOf,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from vlsafe.evals.config import EvalConfig
from vlsafe.evals.sample import ImageSetting
from vlsafe.hooks import SteeringVector
from vlsafe.methods.cmrm.apply import ApplyOptions
from vlsafe.methods.cmrm.intervention import vector_hash
from vlsafe.methods.cmrm.presets import PresetName, fill_preset, named_choice

__all__ = ["CMRMEvalConfig", "CMRMSettings", "CalibrateConfig", "VectorRef"]

#: A CMRM vector: a saved file, ``"sample"`` (sample-level CMRM: a vector per input) or one in memory.
VectorRef = str | Path | InstanceOf[SteeringVector]


class CMRMSettings(BaseModel):
    """Which CMRM steers an evaluation and how.

    Attributes:
        cmrm: a vector file from ``vlsafe cmrm calibrate``, ``sample`` (per-input vectors computed on the
            fly), or (from Python) a ``SteeringVector``.
        preset: the named set of choices that fills the options left unset: ``paper`` (the paper's method:
            blank img′, every layer, all positions, prompt and decoded tokens) or ``band`` (vlsafe's earlier
            default: own image, middle band with per-layer increments).
        apply: how the vector is applied (see :class:`~vlsafe.methods.cmrm.ApplyOptions`).
        corrupt: img′, the image of the corrupted pass (sample level; a sweep that calibrates its own vectors
            also calibrates with it): ``blank`` (paper preset; the paper's meaningless image), ``noise``,
            ``image`` (the input's own; vlsafe's option) or ``mean`` (vlsafe's).
        vector_positions: sample level: where the per-input vector is measured (``last`` prompt token, as the
            paper preset reads the paper, or the mean over the query's tokens, vlsafe's option).
        exclude_anchors: leave the vector's held-out calibration anchors out of the evaluated samples.
    """

    model_config = ConfigDict(extra="forbid")

    cmrm: VectorRef
    preset: PresetName = "paper"
    apply: ApplyOptions = Field(default_factory=ApplyOptions)
    corrupt: Literal["blank", "noise", "image", "mean"] = "blank"
    vector_positions: Literal["last", "text_mean"] = "last"
    exclude_anchors: bool = True

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return fill_preset(
            data, {"corrupt": "corrupt", "vector_positions": "vector_positions"}, apply_key="apply"
        )

    @field_validator("corrupt", "vector_positions", mode="before")
    @classmethod
    def _choices(cls, v: Any, info: ValidationInfo) -> Any:
        return named_choice(cls, v, info)

    @field_serializer("cmrm")
    def _vector_text(self, value: Any) -> str | None:
        if value is None:
            return None
        return f"vector:{vector_hash(value)}" if isinstance(value, SteeringVector) else str(value)

    def cmrm_label(self) -> str:
        """The vector as text: its path, ``sample``, or ``vector:<hash>`` for one in memory."""
        return str(self._vector_text(self.cmrm))


class CMRMEvalConfig(CMRMSettings, EvalConfig):
    """One evaluation run with CMRM: an :class:`~vlsafe.evals.EvalConfig` plus :class:`CMRMSettings`.

    CMRM excludes ``steer``; ``alpha`` is CMRM's strength here (it fills ``apply.alpha``, so the command line's
    ``--alpha`` serves both ``--steer`` and ``--cmrm``).
    """

    @model_validator(mode="before")
    @classmethod
    def _alpha_into_apply(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "alpha" not in data or data.get("steer") is not None:
            return data
        apply = data.get("apply")
        if isinstance(apply, ApplyOptions):
            apply = apply.model_dump(exclude_unset=True)
        if not isinstance(apply, (dict, type(None))):
            return data  # not a mapping: the field's own validation reports it
        data, apply = dict(data), dict(apply or {})
        if "alpha" in apply and apply["alpha"] != data["alpha"]:
            raise ValueError(
                f"alpha={data['alpha']!r} and apply.alpha={apply['alpha']!r} disagree: give CMRM's strength once"
            )
        apply["alpha"] = data.pop("alpha")
        data["apply"] = apply
        return data

    @model_validator(mode="after")
    def _no_steer(self) -> CMRMEvalConfig:
        if self.steer is not None:
            raise ValueError("cmrm and steer cannot be combined: give one of them")
        return self

    def eval_config(self) -> EvalConfig:
        """The plain :class:`~vlsafe.evals.EvalConfig` of the run (what its run directory records)."""
        return EvalConfig.model_validate(
            self.model_dump(include=set(EvalConfig.model_fields), exclude_unset=True)
        )


class CalibrateConfig(BaseModel):
    """One CMRM calibration: anchors from a benchmark, vectors saved to ``out``.

    Attributes:
        model: HF id or local directory of the vision-language model.
        anchors: anchor benchmark ``NAME[:split]`` (a registered loader, see ``vlsafe benchmarks``).
        out: the vector file (``.safetensors``; its metadata is written beside it as ``.json``).
        preset: the named set of choices that fills the options left unset (``paper``: blank img′, mean over
            the anchors, last prompt position; ``band``: the anchor's own image).
        data_dir: the anchor benchmark's data folder.
        mode: ``heldout`` (calibrate on ``fraction`` of the benchmark; evaluations leave those samples out)
            or ``transfer`` (all of it: calibrate on one benchmark, evaluate on another).
        fraction: held-out share (mode ``heldout``).
        benign: benign image-query pairs added to the anchors (``None``: as many as the anchors).
        benign_setting: image setting of the benign pairs.
        limit: load only the first ``limit`` benchmark samples.
        level: ``dataset`` (one vector per layer) or ``sample`` (one row per anchor); both are the paper's.
        reduce: how the differences are reduced: ``mean`` (the paper) or ``pca`` (first principal component;
            vlsafe's option).
        corrupt: img′, the image of the multimodal pass: ``blank`` (paper preset: the paper's meaningless
            image), ``noise``, ``image`` (the anchor's own; vlsafe's option) or ``mean`` (its mean colour).
        positions: where states are read: the ``last`` prompt token (the paper preset's reading) or the mean
            over the query's tokens (``text_mean``; vlsafe's option).
        layers: layers to calibrate (``None``: all; choose the steered ones when applying).
        batch_size: anchors per forward pass.
        seed: seed of the held-out split and of noise images.
        dtype: model dtype (``None``: the loader's default).
        device: move the model there.
        trust_remote_code: allow the checkpoint's own code to run.
        allow_pickle: also load model weights stored as pickles (``pytorch_model.bin``).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    anchors: str = Field(min_length=1)
    out: Path
    data_dir: str | None = None
    mode: Literal["heldout", "transfer"] = "heldout"
    fraction: float = Field(0.2, gt=0, lt=1)
    benign: int | None = Field(None, ge=0)
    benign_setting: ImageSetting = ImageSetting.NOISE
    limit: int | None = Field(None, ge=1)
    preset: PresetName = "paper"
    level: Literal["dataset", "sample"] = "dataset"
    reduce: Literal["mean", "pca"] = "mean"
    corrupt: Literal["blank", "noise", "image", "mean"] = "blank"
    positions: Literal["last", "text_mean"] = "last"
    layers: list[int] | None = None
    batch_size: int = Field(8, ge=1)
    seed: int = 0
    dtype: str | None = None
    device: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return fill_preset(data, {"corrupt": "corrupt", "positions": "vector_positions", "reduce": "reduce"})

    @field_validator("level", "reduce", "corrupt", "positions", mode="before")
    @classmethod
    def _choices(cls, v: Any, info: ValidationInfo) -> Any:
        return named_choice(cls, v, info)
