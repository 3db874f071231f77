"""TGA end to end: ``TGAConfig`` (YAML) -> retrieval -> staged training with the guide loss -> exported model.

Example config (``vlsafe train tga CONFIG.yaml``)::

    model: runs/base-vlm                 # HF id or local directory
    data: data/tga_train.jsonl           # see vlsafe.methods.training.data
    output_dir: runs/tga
    retrieval: {corpus: data/captions.txt, kind: clip, model_path: openai/clip-vit-base-patch32}
    guide: {layers: null, analysis: runs/analysis-layers, form: paper, weight: 1.0}
    stages:
      - {stage: projector, lr: 1.0e-3, max_steps: 200, batch_size: 4}
      - {stage: projector_lora, lr: 2.0e-4, max_steps: 200, batch_size: 4, lora: {rank: 16}}

Retrieval (:func:`attach_retrieved`) fills each record's missing ``retrieved`` text: by the record's image with
``kind: clip`` (image-to-text, as the paper; or any :class:`~vlsafe.data.retrieval.ImageRetriever` passed to
:func:`run_tga`), by its instruction or caption with ``bm25`` / ``embedding``. A retrieved text identical to the
record's caption is cut to its first half (the released rule; ``exclude_self`` skips it instead). The prompt is
``"Retrieved Text: {r}. <image>\\n{q}"`` (``order: text_first``, as released) or image first; evaluate the model with
the same retrieval (``vlsafe eval --retrieval-corpus ... --retriever ... --retrieval-order ...``).
The TGA loss (``guide.form``: ``paper``, ``released``, ``released-no-grad``; see
:mod:`vlsafe.methods.training.tga_loss`) trains every stage, projector-only and LLM stages alike.

Each stage trains in ``output_dir/stage<i>-<stage>`` with :class:`~vlsafe.methods.training.tga_loss.TGATrainer`
(a ``transformers.Trainer``; launch with ``accelerate launch`` for DDP / FSDP / DeepSpeed) and is resumable:
rerunning continues where it stopped, and refuses a stage whose settings changed;
the final model (LoRA merged) is written to ``output_dir/model`` and loads with :func:`vlsafe.models.load_model`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlsafe.core.config import one_of, read_yaml_mapping, validate_config
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.retrieval import (
    ImageRetriever,
    RetrievalOrder,
    Retriever,
    halve_own_caption,
    load_corpus,
    make_retriever,
    retrieval_cache_dir,
)
from vlsafe.methods.training.checkpoint import latest_checkpoint, load_trainable, save_trained_model
from vlsafe.methods.training.data import TGARecord, encode_tga_batch, read_tga_records
from vlsafe.methods.training.engine import config_difference, resume_checkpoint
from vlsafe.methods.training.stages import apply_stage
from vlsafe.methods.training.tga_loss import (
    GUIDE_FORMS,
    TGALoss,
    TGATrainer,
    layers_from_analysis,
    middle_third,
)
from vlsafe.methods.training.trainer import TrainConfig, Trainer
from vlsafe.models import load_model
from vlsafe.models.bundle import ModelBundle

logger = logging.getLogger(__name__)


class RetrievalConfig(BaseModel):
    """Where retrieved texts come from for records that do not carry one, and where the image goes."""

    model_config = ConfigDict(extra="forbid")
    corpus: Path | None = None
    kind: Literal["bm25", "embedding", "clip"] = "bm25"
    model_path: Path | None = Field(
        None, description="encoder: a local folder (embedding) or a CLIP / SigLIP id or folder (clip)"
    )
    query: Literal["instruction", "caption", "image"] | None = Field(
        None, description="what is searched with (default: image for clip, else instruction)"
    )
    exclude_self: bool = Field(
        False, description="never retrieve the record's own caption (default: cut it to its first half)"
    )
    order: RetrievalOrder = Field(
        "text_first", description="retrieved text before the image (as released) or after it"
    )

    @model_validator(mode="after")
    def _query_fits_kind(self) -> RetrievalConfig:
        if self.query == "image" and self.kind != "clip":
            raise ValueError(f"query 'image' needs kind 'clip' (kind is {self.kind!r})")
        if self.corpus is not None and self.kind in ("embedding", "clip") and self.model_path is None:
            raise ValueError(f"kind {self.kind!r} needs model_path (the encoder)")
        return self

    @property
    def query_by(self) -> str:
        """The query in use: ``query``, else ``image`` for ``clip`` and ``instruction`` otherwise."""
        return self.query or ("image" if self.kind == "clip" else "instruction")


class GuideConfig(BaseModel):
    """The guide loss: its form, guided layers, ``λ`` and its schedule."""

    model_config = ConfigDict(extra="forbid")
    form: Literal["paper", "released", "released-no-grad"] = Field(
        "paper", description="the loss: paper (−cos + softplus), released (its exp terms, with gradient) or "
        "released-no-grad (CE with retrieval prompts, as the released code trains)"
    )
    layers: list[int] | None = None
    analysis: Path | None = Field(None, description="a 'vlsafe analyze layers' folder (safety layers)")
    weight: float = Field(1.0, ge=0)
    schedule: Literal["constant", "linear"] | None = Field(
        None, description="schedule of λ (default: linear for paper, constant for the released forms)"
    )
    ce_weight: float = Field(1.0, ge=0)

    @field_validator("form", mode="before")
    @classmethod
    def _known_form(cls, value: Any) -> Any:
        return one_of(value, GUIDE_FORMS)


class TGAConfig(BaseModel):
    """A full TGA run (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    data: Path
    output_dir: Path
    dtype: str | None = "float32"
    trust_remote_code: bool = False
    retrieval: RetrievalConfig = Field(default_factory=lambda: RetrievalConfig.model_validate({}))
    guide: GuideConfig = Field(default_factory=lambda: GuideConfig.model_validate({}))
    stages: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"stage": "projector", "lr": 1e-3}, {"stage": "projector_lora", "lr": 2e-4}]
    )
    export: bool = True

    @field_validator("stages")
    @classmethod
    def _valid_stages(cls, stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not stages:
            raise ValueError("give at least one stage")
        for i, stage in enumerate(stages):
            if "output_dir" in stage:
                raise ValueError(f"stage {i}: output_dir is set by the TGA run (output_dir/stage<i>-<stage>)")
            try:
                TrainConfig(output_dir=Path("."), **stage)
            except ValidationError as exc:
                raise ValueError(f"stage {i}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        return stages

    def stage_configs(self) -> list[TrainConfig]:
        """One :class:`TrainConfig` per stage, each in its own folder under ``output_dir``."""
        out = []
        for i, stage in enumerate(self.stages):
            name = stage.get("stage", "projector")
            out.append(TrainConfig(output_dir=self.output_dir / f"stage{i}-{name}", **stage))
        return out


def load_tga_config(path: str | Path) -> TGAConfig:
    """Read a YAML TGA config; relative paths stay relative to the working directory.

    Raises:
        ConfigError: a missing file, unreadable YAML, or a field that breaks its rule (named in the message).
    """
    return validate_config(TGAConfig, read_yaml_mapping(path, "TGA config"), what=str(path))


def build_retriever(config: RetrievalConfig) -> Retriever | None:
    """The configured retriever, or ``None`` without a corpus (``clip`` caches its corpus embeddings in
    :func:`~vlsafe.data.retrieval.retrieval_cache_dir`)."""
    if config.corpus is None:
        return None
    options: dict[str, Any] = {}
    if config.kind == "embedding":
        options["model_path"] = config.model_path
    elif config.kind == "clip":
        options.update(model=str(config.model_path), cache_dir=retrieval_cache_dir())
    return make_retriever(config.kind, load_corpus(config.corpus), **options)


def attach_retrieved(
    records: list[TGARecord],
    retriever: Any,
    query: str = "instruction",
    exclude_self: bool = False,
) -> list[TGARecord]:
    """Copies of ``records`` whose missing ``retrieved`` is filled by ``retriever`` (top-1), queried with the
    record's ``instruction``, ``caption`` or ``image`` (a retriever with ``retrieve_image``:
    :class:`~vlsafe.data.retrieval.ImageRetriever`). A retrieved text identical to the record's caption is cut to
    its first half (:func:`~vlsafe.data.retrieval.halve_own_caption`, the released rule), or with ``exclude_self``
    never retrieved.

    Raises:
        ConfigError: ``image`` with a retriever that does not retrieve by image, or an unknown query.
        InputError: ``image`` for a record without an image.
    """
    if query not in ("instruction", "caption", "image"):
        raise ConfigError(f"retrieval query {query!r} is unknown; it must be one of instruction, caption, image")
    if query == "image" and retriever is not None and not isinstance(retriever, ImageRetriever):
        raise ConfigError(f"retrieval query 'image' needs a retriever that retrieves by image; "
                          f"{type(retriever).__name__} does not")  # fmt: skip
    out = []
    for i, rec in enumerate(records):
        exclude = rec.caption if exclude_self else None
        if rec.retrieved is None and retriever is not None:
            if query == "image":
                if rec.image is None:
                    raise InputError(f"record {rec.id or i} has no image to retrieve by")
                hits = retriever.retrieve_image(rec.image, k=1, exclude=exclude)
            else:
                hits = retriever.retrieve(rec.instruction if query == "instruction" else rec.caption, k=1,
                                          exclude=exclude)  # fmt: skip
            rec = rec.model_copy(update={"retrieved": hits[0] if hits else None})
        if not exclude_self and rec.retrieved is not None:
            rec = rec.model_copy(update={"retrieved": halve_own_caption(rec.retrieved, rec.caption)})
        out.append(rec)
    return out


def guided_layers(config: GuideConfig, bundle: ModelBundle) -> list[int]:
    """Explicit layers, else the analysis' safety layers, else the middle third of the decoder."""
    if config.layers:
        return sorted({bundle.check_layer(j) for j in config.layers})
    if config.analysis is not None:
        return [bundle.check_layer(j) for j in layers_from_analysis(config.analysis)]
    return middle_third(bundle.num_layers)


def train_tga(
    bundle: ModelBundle, records: list[TGARecord], config: TGAConfig, progress: bool = True
) -> dict[str, Any]:
    """Run every stage of ``config`` on ``bundle`` (modified in place) with the TGA loss; returns a summary."""
    layers = guided_layers(config.guide, bundle)
    logger.info("TGA guided layers: %s", layers)
    summary: dict[str, Any] = {"guided_layers": layers, "stages": [], "sharded": False}
    order = config.retrieval.order

    def encode(rows: list[TGARecord]) -> Any:
        return encode_tga_batch(bundle, rows, order=order)

    for stage_cfg in config.stage_configs():
        stage_cfg.progress = progress and stage_cfg.progress
        loss = TGALoss(
            bundle,
            layers,
            weight=config.guide.weight,
            schedule=config.guide.schedule,
            max_steps=stage_cfg.max_steps,
            ce_weight=config.guide.ce_weight,
            form=config.guide.form,
        )
        trainer = Trainer(bundle, stage_cfg, None, records, encode,
                          engine_class=TGATrainer, engine_kwargs={"tga": loss})  # fmt: skip
        result = trainer.train()
        summary["sharded"] = bool(trainer.engine.is_fsdp_enabled or trainer.engine.is_deepspeed_enabled)
        last = result.history[-1] if result.history else {}
        summary["stages"].append(
            {
                "stage": stage_cfg.stage,
                "steps": result.step,
                "checkpoint": str(result.checkpoint),
                "last": last,
            }
        )
    return summary


#: TGAConfig fields that may change when a run is resumed (the stages are checked one by one by the engine).
_TGA_RESUME_FREE = frozenset({"output_dir", "export", "stages"})


def _is_main_process() -> bool:
    """Rank 0 of a launch (``RANK``, as torchrun, accelerate and deepspeed set it), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def check_tga_resume(config: TGAConfig) -> None:
    """Refuse to continue a TGA run in ``config.output_dir`` under other settings: the run's saved
    ``tga_config.json`` (model, data, dtype, retrieval, guide) and every stage with a checkpoint
    (:func:`~vlsafe.methods.training.engine.resume_checkpoint`).

    Raises:
        ConfigError: one line naming the first differing field.
    """
    stages = config.stage_configs()
    started = any(resume_checkpoint(stage) is not None for stage in stages)
    saved = config.output_dir / "tga_config.json"
    if started and saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        new = json.loads(config.model_dump_json())
        diff = config_difference(old, new, _TGA_RESUME_FREE)
        if diff is not None:
            raise ConfigError(f"cannot resume the TGA run in {config.output_dir}: {diff}; "
                              "give another output_dir to start over")  # fmt: skip


def rebuild_trained_model(config: TGAConfig) -> ModelBundle:
    """The trained model rebuilt on the CPU from the stages' newest checkpoints: the base model, then per stage
    its parameter selection (LoRA wrappers included) and its checkpoint's ``trainable.safetensors``. The export
    path of sharded launches (FSDP, DeepSpeed), where no process holds the whole trained model.

    Raises:
        InputError: a stage has no checkpoint (``save_final`` off).
    """
    bundle = load_model(config.model, dtype=config.dtype, trust_remote_code=config.trust_remote_code)
    for stage in config.stage_configs():
        bundle.model = apply_stage(bundle.model, stage.stage, stage.lora)
        ckpt = latest_checkpoint(stage.output_dir)
        if ckpt is None:
            raise InputError(f"{stage.output_dir} has no checkpoint to export the trained model from")
        load_trainable(bundle.model, ckpt)
    return bundle


def run_tga(
    config: TGAConfig | str | Path,
    *,
    output_dir: str | Path | None = None,
    max_steps: int | None = None,
    model: str | None = None,
    progress: bool = True,
    retriever: Any = None,
) -> dict[str, Any]:
    """Load the model and data of ``config``, retrieve, train all stages, export; returns the summary
    (also written to ``output_dir/tga_summary.json``).

    ``retriever`` (a :class:`~vlsafe.data.retrieval.Retriever` or
    :class:`~vlsafe.data.retrieval.ImageRetriever`, e.g. an :class:`~vlsafe.data.retrieval.EmbeddingIndex` over
    the training images' features) replaces the one ``config.retrieval`` describes.

    ``output_dir``, ``model`` and ``max_steps`` (every stage) override the config. In a launch of several
    processes (``accelerate launch``) every process trains and the main process writes the files; after a sharded
    launch (FSDP, DeepSpeed) the export is rebuilt from the checkpoints (:func:`rebuild_trained_model`).

    Raises:
        ConfigError: a bad config, or an output_dir holding a run of other settings (:func:`check_tga_resume`).
    """

    cfg = config if isinstance(config, TGAConfig) else load_tga_config(config)
    updates: dict[str, Any] = {}
    if output_dir is not None:
        updates["output_dir"] = Path(output_dir)
    if model is not None:
        updates["model"] = model
    if max_steps is not None:
        updates["stages"] = [{**s, "max_steps": max_steps} for s in cfg.stages]
    if updates:
        cfg = TGAConfig.model_validate({**cfg.model_dump(), **updates})
    check_tga_resume(cfg)
    main = _is_main_process()
    records = read_tga_records(cfg.data)
    found = retriever if retriever is not None else build_retriever(cfg.retrieval)
    query = cfg.retrieval.query_by if retriever is None or cfg.retrieval.query else (
        "image" if isinstance(retriever, ImageRetriever) else "instruction")  # fmt: skip
    records = attach_retrieved(records, found, query, cfg.retrieval.exclude_self)
    if main:
        cfg.output_dir.mkdir(parents=True, exist_ok=True)
        (cfg.output_dir / "tga_config.json").write_text(cfg.model_dump_json(indent=1))
        with (cfg.output_dir / "train_records.jsonl").open("w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(rec.model_dump_json() + "\n")
    bundle = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    summary = train_tga(bundle, records, cfg, progress=progress)
    if not main:
        return summary
    if cfg.export:
        source = rebuild_trained_model(cfg) if summary["sharded"] else bundle
        summary["model_dir"] = str(save_trained_model(source, cfg.output_dir / "model"))
    (cfg.output_dir / "tga_summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
