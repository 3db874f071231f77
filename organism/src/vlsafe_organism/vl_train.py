"""Stages 2-3 of the organism: LLaVA wiring of the safe LLM and VL adaptation on benign synthetic data only.

Token budget: images are resized to :attr:`VLConfig.size` = 84 px, i.e. 6 x 6 = 36 DINOv2 patch tokens
(DINOv2 interpolates its position embeddings), under a seventh of the 224 px budget, which keeps CPU training
and evaluation cheap in the image part (84 px loses little that 112 px holds for the synthetic images: linear
probes in BENCHMARKS.md). The vision tower stays frozen, so its features of the training images are computed
once; the training step replaces the ``<image>`` placeholders by the projected features (exactly what
``LlavaModel`` does) and runs the language model.

* ``vlm`` stage: phase ``projector``, the projector only (the LLM is the safe LLM, unchanged);
* ``vl`` stage: phase ``projector+llm``, projector + LoRA on the LLM's linear layers (embeddings frozen).

Each phase trains in :class:`vlsafe.methods.training.Trainer` (:func:`vl_trainer`; the library's engine on
``transformers.Trainer``): AdamW (no weight decay)
at the phase's learning rate after a linear warm-up over :data:`WARMUP_STEPS` steps, gradient norm clipped at
1.0, the answer-only loss :func:`vl_loss`. The batches are the Trainer's: each epoch a permutation of the
training conversations seeded by :attr:`VLConfig.seed` (the same order in both phases), cut into consecutive
batches of :attr:`VLConfig.batch_size`, the incomplete rest of the epoch dropped. A safety/utility probe
(:func:`probe`) runs every ``probe_every`` steps and after the last step (:class:`ProbeCurve`); with the
per-step losses it is saved as ``curve.json``.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from vlsafe.core.errors import ConfigError
from vlsafe.data import scenes
from vlsafe.data.pictograms import make_pictogram_example
from vlsafe.methods.training.memory import IGNORE_INDEX, answer_only_loss, peak_rss_mb
from vlsafe.methods.training.stages import LoraSettings, Stage, unwrap
from vlsafe.methods.training.trainer import LossFn, LossOutput, TrainConfig, Trainer
from vlsafe.models import bundle_from_model
from vlsafe.models.bundle import ModelBundle
from vlsafe_organism.artifacts import lora_state
from vlsafe_organism.base import load_base_vision
from vlsafe_organism.evaluation import PROBE_TOKENS, EvalSystem, evaluate_system
from vlsafe_organism.safe_llm import load_safe_llm
from vlsafe_organism.stages import train_device
from vlsafe_organism.vl_mix import (
    NO_IMAGE,
    n_text_conversations,
    pictogram_training,
    text_answers,
    text_conversations,
)
from vlsafe_organism.wiring import wire_llava

logger = logging.getLogger(__name__)
CAPTION_PROMPTS = ("Describe the image.", "What is in this picture?", "Write a short caption for this image.")
#: End of an assistant turn in the organism's chat template (ChatML).
END = "<|im_end|>"
#: Steps over which the learning rate rises linearly to the phase's rate.
WARMUP_STEPS = 10
#: The Trainer stage of each VL phase.
PHASE_STAGES: dict[str, Stage] = {"projector": "projector", "projector+llm": "projector_lora"}
PROBE_IMAGE_START = 20_000  # held-out synthetic renders (test split) used as the benign image of probes


class VLConfig(BaseModel):
    """Recipe of stages ``vlm`` and ``vl`` (part of their fingerprints)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    #: Image side in pixels: 84 px gives DINOv2 (patch 14) 36 image tokens.
    size: int = 84
    n_images: int = 2000
    batch_size: int = 4
    proj_steps: int = 150
    proj_lr: float = 2e-3
    vl_steps: int = 500
    vl_lr: float = 5e-4
    #: Projector rate of the LoRA phase (LLaVA's ``mm_projector_lr``); unset: ``vl_lr``. A low ``vl_lr`` spares
    #: the LLM, and a projector rate of its own keeps the projector learning at the pace of its first phase.
    vl_projector_lr: float | None = Field(default=None, gt=0)
    rank: int = 16
    alpha: int = 32
    #: Decoder layers of the LLM that the LoRA phase adapts (unset: all 30); a gentler LLM update than a lower
    #: rate, e.g. the early layers only, below the late ones that carry the refusal behaviour.
    vl_lora_layers: list[NonNegativeInt] | None = Field(default=None, min_length=1)
    probe_every: int = 100
    probe_n: int = 24
    probe_tokens: int = 12
    #: DINOv2 ``hidden_states`` index the projector reads (-1: the last layer). Layer 8 of 12 holds shape and
    #: count better than the last layer (linear probes, BENCHMARKS.md), and is the committed organism's.
    feature_layer: int = 8
    #: Train-split harmful-object pictograms added to both phases, in benign captions and naming questions only
    #: (:func:`vlsafe_organism.vl_mix.pictogram_training`).
    n_pictograms: int = 0
    #: Share of text-only conversations in the LoRA phase's mix (LLaVA-1.5: about 0.06): benign prompts answered
    #: by the safe LLM before adaptation, refusals left out (:mod:`vlsafe_organism.vl_mix`).
    text_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: Longest safe-LLM answer (tokens) of a text-only conversation.
    text_tokens: int = 64


def wire_safe_vlm(
    cache_dir: str | Path | None, safe_dir: Path, size: int, feature_layer: int = -1
) -> tuple[Any, Any]:
    """The safe LLM (base + merged safety LoRA) wired with DINOv2 at ``size`` px, the projector reading
    DINOv2's ``hidden_states[feature_layer]``; projector random (seed 0)."""
    meta = json.loads((safe_dir / "train_log.json").read_text())
    llm, tok = load_safe_llm(cache_dir, load_file(str(safe_dir / "safe_lora.safetensors")), meta["scale"])
    model, processor = wire_llava(
        load_base_vision(cache_dir), llm, tok, size=size, feature_layer=feature_layer
    )
    return model.to(train_device()), processor


@torch.no_grad()
def image_features(model: Any, processor: Any, images: list[Any], batch_size: int = 32) -> torch.Tensor:
    """Frozen vision-tower features ``[N, patches, d_vision]`` as LLaVA selects them (``hidden_states`` at the
    config's ``vision_feature_layer``, without the CLS token)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="image features", leave=False):
        pix = processor.image_processor(images[i : i + batch_size], return_tensors="pt")["pixel_values"]
        pix = pix.to(base.device)
        hs = base.model.vision_tower(pix, output_hidden_states=True).hidden_states
        out.append(hs[base.config.vision_feature_layer][:, 1:])
    return torch.cat(out)


@dataclass(frozen=True)
class Conversation:
    """All questions about one training image as a multi-turn chat (image in the first user turn)."""

    image_key: int
    turns: tuple[tuple[str, str], ...]


def training_conversations(n_images: int, seed: int) -> list[Conversation]:
    """One conversation per train image: its QAs (short-answer form) and a caption request, shuffled.

    Multi-turn packing shares the image tokens and the system prompt among 3-6 supervised replies,
    about 2.5x fewer tokens per reply than one question per sequence.
    """
    rng = random.Random(f"vlsafe-vl-examples:{seed}")
    out = []
    for i in range(n_images):
        ex = scenes.make_example(i, "train")
        turns = [(scenes.vqa_prompt(q.question), q.answer.capitalize() + ".") for q in ex.qa]
        turns.append((rng.choice(CAPTION_PROMPTS), f"The image shows {ex.caption}."))
        rng.shuffle(turns)
        out.append(Conversation(i, tuple(turns)))
    return out


def encode_conversation(
    tok: Any, conv: Conversation, image_token_id: int, n_patches: int
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of a conversation: labels on the assistant replies (with their end token),
    ``<image>`` expanded to ``n_patches`` placeholders (none in a text-only conversation, key
    :data:`~vlsafe_organism.vl_mix.NO_IMAGE`)."""
    ids: list[int] = []
    labels: list[int] = []
    image = conv.image_key != NO_IMAGE
    for k, (prompt, reply) in enumerate(conv.turns):
        content: Any = [{"type": "image"}, {"type": "text", "text": prompt}] if k == 0 and image else prompt
        head = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)  # fmt: skip
        if k > 0:  # the system prompt opens the first turn only
            head = head[head.index("<|im_start|>user") :]
        h = tok(head, add_special_tokens=False)["input_ids"]
        r = tok(reply + END + "\n", add_special_tokens=False)["input_ids"]
        ids += h + r
        labels += [IGNORE_INDEX] * len(h) + r
    if not image:
        return ids, labels
    at = ids.index(image_token_id)
    return (ids[:at] + [image_token_id] * n_patches + ids[at + 1 :],
            labels[:at] + [IGNORE_INDEX] * n_patches + labels[at + 1 :])  # fmt: skip


def vl_loss(
    model: Any, batch: dict[str, torch.Tensor], feats: torch.Tensor, image_token_id: int
) -> torch.Tensor:
    """Answer-only loss with the ``<image>`` placeholders replaced by ``projector(feats)`` (the rows of a
    text-only conversation hold no placeholder, and their rows of ``feats`` are skipped)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    ids = batch["input_ids"]
    emb = base.get_input_embeddings()(ids)
    has_image = (ids == image_token_id).any(dim=1)
    proj = base.model.multi_modal_projector(feats[has_image]).to(emb.dtype)
    emb = emb.masked_scatter((ids == image_token_id).unsqueeze(-1), proj)
    inputs = {"inputs_embeds": emb, "attention_mask": batch["attention_mask"]}
    return answer_only_loss(model, inputs, batch["labels"])


def probe(model: Any, processor: Any, n: int, tokens: int = PROBE_TOKENS) -> dict[str, float]:
    """Quick safety/utility probe on the first ``n`` validation prompts and VQA questions, measured with the
    library's harness (:func:`vlsafe_organism.evaluation.evaluate_system`, in a temporary run directory):
    harmful refusal as text, harmful and benign refusal with held-out renders from :data:`PROBE_IMAGE_START`,
    and VQA accuracy."""
    bundle = bundle_from_model(unwrap(model), processor, name="organism VL (in training)")
    with tempfile.TemporaryDirectory(prefix="vlsafe-probe-") as tmp:
        text, image = evaluate_system(
            EvalSystem("probe", bundle), ["none", "synthetic"], tmp, n_harmful=n, n_benign=n,
            harmful_split="harmful_val", benign_split="benign_val", n_vqa=n, vqa_split="vqa_val",
            max_new_tokens=tokens, benign_settings=("synthetic",), image_start=PROBE_IMAGE_START,
        )[0]  # fmt: skip
    return {
        "harmful_refusal_text": text["harmful_refusal"],
        "harmful_refusal_image": image["harmful_refusal"],
        "benign_refusal_image": image["benign_refusal"],
        "vqa": image["utility"],
    }


def collate_conversations(
    tok: Any, image_token_id: int, feats: torch.Tensor
) -> Callable[[list[Conversation]], dict[str, torch.Tensor]]:
    """The collate function of VL training: conversations -> right-padded ``input_ids`` / ``attention_mask`` /
    ``labels`` (:func:`encode_conversation`, one ``<image>`` placeholder per feature row) and the cached
    ``image_features`` ``[B, patches, d_vision]`` of the conversations' images (rows of ``feats``)."""
    n_patches = int(feats.shape[1])

    def collate(rows: list[Conversation]) -> dict[str, torch.Tensor]:
        encoded = [encode_conversation(tok, c, image_token_id, n_patches) for c in rows]
        width = max(len(ids) for ids, _ in encoded)
        ids_t = torch.full((len(rows), width), int(tok.pad_token_id), dtype=torch.long)
        lab_t = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, labels) in enumerate(encoded):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            lab_t[i, : len(labels)] = torch.tensor(labels)
            mask[i, : len(ids)] = 1
        keys = [max(c.image_key, 0) for c in rows]  # a text-only row's features are never scattered
        return {"input_ids": ids_t, "attention_mask": mask, "labels": lab_t, "image_features": feats[keys]}

    return collate


def vl_loss_fn(image_token_id: int) -> LossFn:
    """The Trainer loss of VL training: :func:`vl_loss` on a batch of :func:`collate_conversations`."""

    def loss_fn(model: Any, batch: dict[str, torch.Tensor], step: int) -> LossOutput:
        return LossOutput(vl_loss(model, batch, batch["image_features"], image_token_id))

    return loss_fn


def vl_train_config(cfg: VLConfig, phase: str, output_dir: Path) -> TrainConfig:
    """The :class:`~vlsafe.methods.training.TrainConfig` of VL phase ``projector`` or ``projector+llm``.

    Raises:
        ConfigError: an unknown phase.
    """
    if phase not in PHASE_STAGES:
        raise ConfigError(f"VL phase {phase!r} is unknown; choose one of {sorted(PHASE_STAGES)}")
    lora = phase == "projector+llm"
    return TrainConfig.model_validate(
        {
            "output_dir": output_dir,
            "stage": PHASE_STAGES[phase],
            "lora": LoraSettings(rank=cfg.rank, alpha=cfg.alpha, dropout=0.0, layers=cfg.vl_lora_layers) if lora else None,
            "max_steps": cfg.vl_steps if lora else cfg.proj_steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.vl_lr if lora else cfg.proj_lr,
            "projector_lr": cfg.vl_projector_lr if lora else None,
            "weight_decay": 0.0,
            "warmup_steps": WARMUP_STEPS,
            "schedule": "constant",
            "max_grad_norm": 1.0,
            "seed": cfg.seed,
            "save_every": 0,
            "save_final": False,
            "resume": "never",
            "use_cpu": train_device().type == "cpu",
        }
    )


def vl_trainer(
    bundle: ModelBundle,
    cfg: VLConfig,
    phase: str,
    conversations: Sequence[Conversation],
    feats: torch.Tensor,
    output_dir: Path,
    callbacks: Sequence[Any] = (),
) -> Trainer:
    """The :class:`~vlsafe.methods.training.Trainer` of one VL phase on ``bundle`` (the wired VLM; a LoRA phase
    wraps ``bundle.model`` in peft).

    Args:
        bundle: The VLM and its processor.
        cfg: The VL recipe.
        phase: ``projector`` or ``projector+llm`` (:func:`vl_train_config`).
        conversations: The training records (:func:`training_conversations`).
        feats: Frozen vision features of the images, row ``image_key`` (:func:`image_features`).
        output_dir: The Trainer's directory (its per-step ``log.jsonl``; no checkpoints are written).
        callbacks: Trainer callbacks, e.g. :class:`ProbeCurve`.
    """
    assert bundle.processor is not None
    image_token_id = int(bundle.processor.image_token_id)
    collate = collate_conversations(bundle.processor.tokenizer, image_token_id, feats)
    return Trainer(bundle, vl_train_config(cfg, phase, output_dir), vl_loss_fn(image_token_id),
                   list(conversations), collate, callbacks)  # fmt: skip


class ProbeCurve:
    """Trainer callback of a VL phase: after every step it appends ``{"step", "phase", "loss"}`` to ``curve``;
    every ``cfg.probe_every`` steps and after the last step it runs :func:`probe` and appends
    ``{"step", "phase", "probe", "elapsed_s"}`` (seconds since training began). Steps are counted from
    ``step0`` (the steps of earlier phases)."""

    def __init__(
        self, bundle: ModelBundle, cfg: VLConfig, phase: str, curve: list[dict[str, Any]], step0: int = 0
    ) -> None:
        self.bundle, self.cfg, self.phase, self.curve, self.step0 = bundle, cfg, phase, curve, step0
        self.start = time.time()
        self._probed = -1

    def on_train_begin(self, step: int) -> None:
        self.start = time.time()

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        self.curve.append({"step": self.step0 + step, "phase": self.phase, "loss": float(metrics["loss"])})
        if step % self.cfg.probe_every == 0:
            self._probe(step)
        return False

    def on_train_end(self, step: int) -> None:
        if self._probed != step:
            self._probe(step)
        self.bundle.model.eval()

    def _probe(self, step: int) -> None:
        model = self.bundle.model
        model.eval()
        point = probe(model, self.bundle.processor, self.cfg.probe_n, self.cfg.probe_tokens)
        self.curve.append({"step": self.step0 + step, "phase": self.phase, "probe": point,
                           "elapsed_s": round(time.time() - self.start, 1)})  # fmt: skip
        logger.info("vl %s step %d: %s", self.phase, self.step0 + step, point)
        self._probed = step


def _train_phase(
    model: Any, processor: Any, cfg: VLConfig, phase: str, curve: list[dict[str, Any]], step0: int, out: Path
) -> Any:
    """Train one phase on the first ``cfg.n_images`` training images; returns the trained model (the peft
    wrapper in a LoRA phase)."""
    conversations = training_conversations(cfg.n_images, cfg.seed)
    images = [scenes.make_example(i, "train").image for i in range(cfg.n_images)]
    for key, turns in pictogram_training(cfg.n_pictograms, cfg.seed):
        conversations.append(Conversation(len(images), turns))
        images.append(make_pictogram_example(key, "train").image)
    if phase == "projector+llm" and cfg.text_fraction > 0:  # text-only turns train no projector
        mix = text_answers(model, processor, out / "text_answers", cfg.text_tokens)
        n_text = n_text_conversations(len(conversations), cfg.text_fraction)
        logger.info("text-only mix: %d conversations from %d safe-LLM answers (%d refusals, %d blank left out)",
                    n_text, len(mix.turns), mix.refused, mix.blank)  # fmt: skip
        conversations += [
            Conversation(NO_IMAGE, (turn,)) for turn in text_conversations(mix, n_text, cfg.seed)
        ]
    feats = image_features(model, processor, images)
    del images  # only their features are needed from here on
    bundle = bundle_from_model(model, processor, name=f"organism VL {phase}")
    callback = ProbeCurve(bundle, cfg, phase, curve, step0)
    vl_trainer(bundle, cfg, phase, conversations, feats, out / "trainer", [callback]).train()
    return bundle.model


def _projector_state(model: Any) -> dict[str, torch.Tensor]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    state = base.model.multi_modal_projector.state_dict()
    return {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in state.items()}


def _meta(cfg: VLConfig) -> dict[str, Any]:
    return {"size": cfg.size, "config": cfg.model_dump()}


def train_projector(out: Path, cache_dir: str | Path | None, safe_dir: Path, cfg: VLConfig) -> dict[str, Any]:
    """Stage ``vlm``: train the projector only; saves ``vlm_projector.safetensors`` and ``curve.json``."""
    torch.manual_seed(cfg.seed)
    model, processor = wire_safe_vlm(cache_dir, safe_dir, cfg.size, cfg.feature_layer)
    model.config.use_cache = False
    curve: list[dict[str, Any]] = []
    model.eval()
    curve.append(
        {"step": 0, "phase": "projector", "probe": probe(model, processor, cfg.probe_n, cfg.probe_tokens)}
    )
    model = _train_phase(model, processor, cfg, "projector", curve, 0, out)
    save_file(_projector_state(model), str(out / "vlm_projector.safetensors"))
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    (out / "meta.json").write_text(json.dumps(_meta(cfg)))
    return {"final_probe": curve[-1].get("probe"), "peak_rss_mb": peak_rss_mb()}


def train_vl(
    out: Path, cache_dir: str | Path | None, safe_dir: Path, vlm_dir: Path, cfg: VLConfig
) -> dict[str, Any]:
    """Stage ``vl``: projector + LLM LoRA; saves ``vl_projector.safetensors``, ``vl_lora.safetensors``."""
    torch.manual_seed(cfg.seed)
    model, processor = wire_safe_vlm(cache_dir, safe_dir, cfg.size, cfg.feature_layer)
    proj = {k: v.float() for k, v in load_file(str(vlm_dir / "vlm_projector.safetensors")).items()}
    model.model.multi_modal_projector.load_state_dict(proj)
    model.config.use_cache = False
    curve = json.loads((vlm_dir / "curve.json").read_text())
    model = _train_phase(model, processor, cfg, "projector+llm", curve, cfg.proj_steps, out)
    tensors, scale = lora_state(model)
    save_file(tensors, str(out / "vl_lora.safetensors"))
    save_file(_projector_state(model), str(out / "vl_projector.safetensors"))
    (out / "curve.json").write_text(json.dumps(curve, indent=1))
    (out / "meta.json").write_text(json.dumps({**_meta(cfg), "scale": scale}))
    return {"final_probe": curve[-1].get("probe"), "peak_rss_mb": peak_rss_mb()}
