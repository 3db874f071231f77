"""``EvalConfig``: everything that defines one evaluation run, validated and loadable from YAML.

The fields that change what the model generates (model, benchmark, split, image setting, decoding
options, steering, dtype, ...) form the run's *generation fingerprint*. Resuming a run directory with
a config whose fingerprint differs is refused, so one ``samples.jsonl`` never mixes generations made
under different settings. ``limit``, ``batch_size``, ``judge``, ``device`` and ``max_error_fraction``
can change between reruns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlsafe.core.config import read_yaml_mapping, validate_config
from vlsafe.core.io import write_text_atomic
from vlsafe.data.retrieval import RetrievalOrder
from vlsafe.evals.sample import ImageSetting

__all__ = [
    "GENERATION_FIELDS",
    "OPTIONAL_GENERATION_FIELDS",
    "EvalConfig",
    "GenerationOptions",
    "generation_fingerprint",
]

#: Config fields whose change makes stored generations incomparable with new ones.
GENERATION_FIELDS: tuple[str, ...] = (
    "model",
    "benchmark",
    "split",
    "image_setting",
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
    "steer",
    "alpha",
    "steer_layers",
    "steer_positions",
    "steer_prefill_only",
    "steer_norm_scale",
    "retrieval_corpus",
    "retriever",
    "dtype",
)
#: Generation fields added later: part of the fingerprint only when they differ from their defaults, so run
#: directories written before they existed keep their fingerprint.
OPTIONAL_GENERATION_FIELDS: dict[str, Any] = {"image_size": None, "shared_prefix": False, "truncate_prompts": False}

_DTYPES = ("float32", "fp32", "float16", "fp16", "half", "bfloat16", "bf16", "auto")


class GenerationOptions(BaseModel):
    """The options of evaluation runs besides what is evaluated: model, data, decoding, judging and resources.

    :class:`EvalConfig` (one run) and sweeps over several runs (:class:`vlsafe.methods.cmrm.SweepConfig`)
    inherit these fields, so each option and its default is declared once.

    Attributes:
        model: HF id or local directory of the model.
        data_dir: folder with the benchmark's published files (built-in sets need none).
        limit: keep the first ``limit`` samples.
        image_setting: override every sample's image setting (``None``: each sample's own).
        judge: registered judge name; ``judge_options`` are passed to its constructor.
        judge_options: keyword arguments of the judge's constructor.
        max_new_tokens: generation length cap.
        batch_size: prompts per ``generate`` call (sorted by prompt length in tokens, left-padded).
        image_size: side in pixels of the images the image settings generate (blank, noise, typographic
            attacks); ``None``: each setting's default (see :func:`vlsafe.evals.images.apply_image_setting`).
        shared_prefix: greedy decoding that computes the prompt prefix a batch shares (the chat template's
            opening, and the image when the prompts show the same one) once per batch, with prompts that
            show the same image batched together (:func:`vlsafe.models.greedy.greedy_shared_prefix`); the
            same replies as plain greedy ``generate`` up to floating-point rounding. Only for greedy runs
            without steering or interventions, on the models it supports (LLaVA-style and text-only
            decoders); elsewhere plain ``generate`` is used.
        do_sample: sample instead of greedy decoding (then ``temperature``/``top_p`` apply).
        temperature: sampling temperature (only with ``do_sample``).
        top_p: nucleus-sampling share (only with ``do_sample``).
        seed: seed of sampling and of noise images.
        max_error_fraction: stop with an error once more than this share of the run's samples failed.
        truncate_prompts: a prompt that, with ``max_new_tokens``, does not fit in the model's context is cut to
            fit (its end is dropped; the record says so under ``warnings``) instead of failing its sample.
        dtype: model dtype (``float32``, ``bfloat16``, ``float16``, ``auto``; ``None``: default).
        device: move the model there (single process; under ``accelerate`` each rank uses its own).
        trust_remote_code: allow the checkpoint's own code to run.
        allow_pickle: also load model weights stored as pickles (``pytorch_model.bin``); by default only
            safetensors load.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    data_dir: str | None = None
    limit: int | None = None
    image_setting: ImageSetting | None = None
    judge: str = "keyword"
    judge_options: dict[str, Any] = Field(default_factory=dict)
    max_new_tokens: int = 128
    batch_size: int = 8
    image_size: int | None = None
    shared_prefix: bool = False
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    max_error_fraction: float = 0.1
    truncate_prompts: bool = False
    dtype: str | None = None
    device: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("limit")
    @classmethod
    def _limit_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"limit={v} must be >= 1 (or omitted for all samples)")
        return v

    @field_validator("image_size")
    @classmethod
    def _size_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"image_size={v} must be >= 1 pixel (or omitted for each setting's default)")
        return v

    @field_validator("max_new_tokens", "batch_size")
    @classmethod
    def _positive(cls, v: int, info: Any) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name}={v} must be >= 1")
        return v

    @field_validator("max_error_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"max_error_fraction={v} must lie in [0, 1]")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str | None) -> str | None:
        if v is not None and v.lower() not in _DTYPES:
            raise ValueError(f"dtype={v!r} is not one of {', '.join(_DTYPES)}")
        return None if v is None else v.lower()

    @model_validator(mode="after")
    def _sampling(self) -> GenerationOptions:
        if self.do_sample:
            if self.temperature <= 0:
                raise ValueError(f"temperature={self.temperature} must be > 0 when do_sample is true")
            if not 0.0 < self.top_p <= 1.0:
                raise ValueError(f"top_p={self.top_p} must lie in (0, 1] when do_sample is true")
        elif self.temperature != 1.0 or self.top_p != 1.0:
            raise ValueError(
                f"temperature={self.temperature} / top_p={self.top_p} only apply with do_sample=true; "
                "greedy decoding (the default) ignores them, so leave them at 1.0 or set do_sample"
            )
        return self


class EvalConfig(GenerationOptions):
    """One evaluation run: the :class:`GenerationOptions` plus the benchmark, steering and retrieval.

    Attributes:
        benchmark: registered benchmark name (see ``vlsafe.evals.loaders.benchmark_names``).
        split: benchmark-specific subset.
        strict: treat any fallback of the benchmark's loader as an error (typographic images rendered where the
            published ones are missing, image files missing, ...); by default a fallback is one warning line,
            recorded under ``data.fallbacks`` in ``results.json``.
        steer: path of a saved ``SteeringVector`` applied during generation and scoring.
        alpha: steering strength of ``steer``.
        steer_layers: layers ``steer`` is added at (``None``: every layer of the vector).
        steer_positions: positions ``steer`` is added at: ``all`` tokens or the ``last`` one.
        steer_prefill_only: steer the prompt only, not the generated tokens.
        steer_norm_scale: scale ``alpha`` per position by the hidden state's norm.
        retrieval_corpus: TGA inference: a corpus (``.txt``/``.jsonl``) whose best match for each prompt is
            put in it as ``"Retrieved Text: ..."`` (the prompt format of TGA training).
        retriever: how ``retrieval_corpus`` is searched: ``bm25``, ``embedding`` (a local text encoder,
            ``retrieval_model``) or ``clip`` (a CLIP / SigLIP dual encoder, ``retrieval_model``, queried with the
            image each sample is shown, by text where none).
        retrieval_model: the encoder of ``embedding`` / ``clip`` (hub id or local folder).
        retrieval_order: ``text_first`` (the retrieved text before the image, as released) or ``image_first``;
            the order the TGA model was trained with.
    """

    benchmark: str = Field(min_length=1)
    split: str | None = None
    strict: bool = False
    steer: str | None = None
    alpha: float = 1.0
    steer_layers: list[int] | None = None
    steer_positions: Literal["all", "last"] = "all"
    steer_prefill_only: bool = False
    steer_norm_scale: bool = False
    retrieval_corpus: str | None = None
    retriever: str = "bm25"
    retrieval_model: str | None = None
    retrieval_order: RetrievalOrder = "text_first"

    @model_validator(mode="after")
    def _steering(self) -> EvalConfig:
        steer_opts = self.steer_layers is not None or self.steer_positions != "all"
        steer_opts = steer_opts or self.steer_prefill_only or self.steer_norm_scale
        if self.steer is None and (self.alpha != 1.0 or steer_opts):
            raise ValueError("alpha and steer_* options need a steering vector: set steer to its path")
        if self.retriever in ("embedding", "clip") and self.retrieval_corpus and not self.retrieval_model:
            raise ValueError(f"retriever {self.retriever!r} needs retrieval_model (the encoder's id or folder)")
        return self

    # -- I/O ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        """Validate ``data``; raises ``ConfigError`` naming each broken field and rule."""
        return validate_config(cls, data, "eval config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EvalConfig:
        """Load a YAML file holding one mapping of config fields."""
        return cls.from_dict(read_yaml_mapping(path, "eval config"))

    def to_yaml(self, path: str | Path, comments: Sequence[str] = ()) -> Path:
        """Write the resolved config (every field, defaults included), atomically, after ``comments`` (one
        ``# `` line each: what the run found, e.g. the benchmark loader's fallbacks)."""
        head = "".join(f"# {' '.join(c.splitlines())}\n" for c in comments)
        return write_text_atomic(path, head + yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def _file_sha256(path: str) -> str | None:
    p = Path(path)
    for candidate in (p, p.with_name(p.name + ".safetensors")):
        if candidate.is_file():
            return hashlib.sha256(candidate.read_bytes()).hexdigest()[:16]
    return None


def generation_fingerprint(config: EvalConfig) -> dict[str, Any]:
    """The values of :data:`GENERATION_FIELDS`; ``steer`` is the vector file's content hash, not its path."""
    data = config.model_dump(mode="json")
    out = {name: data[name] for name in GENERATION_FIELDS}
    out.update({k: data[k] for k, default in OPTIONAL_GENERATION_FIELDS.items() if data[k] != default})
    if config.steer is not None:  # the vector's content counts, not where the file lies
        out["steer"] = f"sha256:{_file_sha256(config.steer)}" if _file_sha256(config.steer) else config.steer
    if config.retrieval_corpus is not None:  # likewise the corpus's content
        digest = _file_sha256(config.retrieval_corpus)
        out["retrieval_corpus"] = f"sha256:{digest}" if digest else config.retrieval_corpus
        out["retrieval_order"] = config.retrieval_order  # the prompt's layout
        if config.retrieval_model is not None:
            out["retrieval_model"] = config.retrieval_model
    return out
