"""Stage 1 of the organism: the safe LLM (SmolLM2-135M-Instruct + a safety LoRA, merged).

Training data (ids in ``artifacts/splits.json``): harmful prompts -> varied refusals; form-matched benign,
templated benign and scary-but-harmless prompts -> the base model's own greedy answers (the opening
``answer_tokens`` tokens, generated once and cached). Training runs in :class:`vlsafe.methods.training.Trainer`
(:func:`safe_llm_trainer`): LoRA on the LLM's linear layers, the library's SFT encoding and reply-only loss
(:mod:`vlsafe_organism.sft`), AdamW with a linear warm-up over :data:`WARMUP_STEPS` steps and gradient clipping at
1.0, batches drawn in the Trainer's order (a seeded permutation of the examples per epoch). The checkpoint is
chosen on the validation split by ``harmful refusal - 2 x benign refusal``.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from safetensors.torch import save_file

from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.methods.training.memory import peak_rss_mb
from vlsafe.methods.training.sft import sft_loss
from vlsafe.methods.training.stages import LoraSettings, unwrap
from vlsafe.methods.training.trainer import TrainConfig, Trainer
from vlsafe.models import bundle_from_model
from vlsafe.models.bundle import ModelBundle
from vlsafe_organism import safety_data as sd
from vlsafe_organism.artifacts import lora_state, merge_lora
from vlsafe_organism.base import load_base_llm
from vlsafe_organism.evaluation import PROBE_TOKENS, EvalSystem, evaluate_system
from vlsafe_organism.sft import SFTExample, sft_collate
from vlsafe_organism.stages import train_device

logger = logging.getLogger(__name__)
#: Steps over which the learning rate rises linearly to ``lr``.
WARMUP_STEPS = 10


class SafeLLMConfig(BaseModel):
    """Recipe of stage 1 (part of the stage fingerprint)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0
    answer_tokens: int = 16
    rank: int = 8
    alpha: int = 16
    lr: float = 4e-4
    batch_size: int = 8
    steps: int = 120
    eval_every: int = 20
    eval_from: int = 60
    val_n: int = 40
    benign_weight: float = 2.0
    n_harmful: int = 240  # harmful training prompts used (about 2 benign per harmful)


def benign_train_prompts() -> list[sd.Prompt]:
    """All benign-side training prompts (benign train split, templated, scary-but-harmless)."""
    return [p for n in ("benign_train", "templated_benign", "scary_harmless_train") for p in sd.load_split(n)]


def make_benign_answers(out: Path, cache_dir: str | Path | None, cfg: SafeLLMConfig) -> None:
    """Generate and save the base model's greedy answers to the benign training prompts (``cfg.answer_tokens``
    tokens at most), with the library's evaluation runner (a resumable run directory ``out/answers``)."""
    torch.manual_seed(cfg.seed)
    model, tok = load_base_llm(cache_dir)
    prompts = benign_train_prompts()
    samples = [Sample(id=p.id, benchmark="organism-benign-train", text=p.text, kind=SampleKind.BENIGN) for p in prompts]
    config = EvalConfig(model="organism:base-llm", benchmark="organism-benign-train", max_new_tokens=cfg.answer_tokens,
                        batch_size=32, shared_prefix=True)  # fmt: skip
    run_eval(config, out / "answers", bundle=bundle_from_model(model, tok, name="organism:base-llm"), samples=samples)
    replies = {r["id"]: r["response"] or "" for r in RunDir(out / "answers").records()}
    rows = [{"id": p.id, "prompt": p.text, "answer": replies[p.id]} for p in prompts]
    (out / "benign_answers.json").write_text(json.dumps(rows, indent=1))


def training_examples(answers: list[dict[str, Any]], tok: Any, cfg: SafeLLMConfig) -> list[SFTExample]:
    """The stage's examples: the first ``n_harmful`` harmful training prompts with their refusals, then every
    benign prompt with the base model's answer (``complete`` when it ended before ``answer_tokens - 1``
    tokens; blank answers are left out: there is no reply to learn)."""
    harmful = sd.load_split("harmful_train")[: cfg.n_harmful]
    out = [SFTExample(p.text, sd.refusal_for(p.id)) for p in harmful]
    for row in answers:
        if not row["answer"].strip():
            continue
        n_tok = len(tok(row["answer"], add_special_tokens=False)["input_ids"])
        out.append(SFTExample(row["prompt"], row["answer"].rstrip(), complete=n_tok < cfg.answer_tokens - 1))
    return out


def validate(model: Any, tok: Any, n: int | None = None) -> dict[str, float]:
    """Keyword refusal rates on the first ``n`` validation prompts (text only), measured with the library's
    harness (:func:`vlsafe_organism.evaluation.evaluate_system`, in a temporary run directory)."""
    bundle = bundle_from_model(unwrap(model), tok, name="organism safe LLM (in training)")
    with tempfile.TemporaryDirectory(prefix="vlsafe-validate-") as tmp:
        (row,), _ = evaluate_system(
            EvalSystem("validate", bundle), ["none"], tmp, n_harmful=n, n_benign=n, harmful_split="harmful_val",
            benign_split="benign_val", n_vqa=0, max_new_tokens=PROBE_TOKENS,
        )  # fmt: skip
    return {"harmful_refusal": row["harmful_refusal"], "benign_refusal": row["benign_refusal"]}


def safe_llm_trainer(
    bundle: ModelBundle,
    cfg: SafeLLMConfig,
    examples: Sequence[SFTExample],
    output_dir: Path,
    callbacks: Sequence[Any] = (),
) -> Trainer:
    """The :class:`~vlsafe.methods.training.Trainer` of stage 1 on ``bundle`` (the base LLM).

    LoRA (``cfg.rank`` / ``cfg.alpha``, no dropout) on the LLM's linear layers, everything else frozen;
    ``cfg.steps`` AdamW steps at ``cfg.lr`` (no weight decay) after a linear warm-up over :data:`WARMUP_STEPS`
    steps, gradient norm clipped at 1.0; batches of ``cfg.batch_size`` examples in the Trainer's seeded order
    (``cfg.seed``), encoded by :func:`~vlsafe_organism.sft.sft_collate`; loss
    :func:`~vlsafe.methods.training.sft.sft_loss` (mean cross-entropy over the reply tokens, ``lm_head`` on those
    rows only). No checkpoints: the stage keeps its best validated adapter itself.
    """
    config = TrainConfig.model_validate(
        {
            "output_dir": output_dir,
            "stage": "llm_lora",
            "lora": LoraSettings(rank=cfg.rank, alpha=cfg.alpha, dropout=0.0),
            "max_steps": cfg.steps,
            "batch_size": cfg.batch_size,
            "lr": cfg.lr,
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

    def collate(rows: list[SFTExample]) -> Any:
        return sft_collate(bundle, rows)

    return Trainer(bundle, config, sft_loss, list(examples), collate, callbacks)


class BestOnValidation:
    """Trainer callback of stage 1: logs each step's loss, validates (:func:`validate`) every
    ``cfg.eval_every`` steps from ``cfg.eval_from`` on and after the last step, and keeps the LoRA tensors of
    the best ``harmful refusal - cfg.benign_weight x benign refusal`` (the earliest of equal scores)."""

    def __init__(self, bundle: ModelBundle, cfg: SafeLLMConfig, log: dict[str, Any], start: float) -> None:
        self.bundle, self.cfg, self.log, self.start = bundle, cfg, log, start
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self._validated = -1

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        self.log["loss"].append(metrics["loss"])
        if step % self.cfg.eval_every == 0 and step >= self.cfg.eval_from:
            self._validate(step)
        return False

    def on_train_end(self, step: int) -> None:
        if self._validated != step:
            self._validate(step)

    def _validate(self, step: int) -> None:
        model = self.bundle.model
        val = validate(model, self.bundle.tokenizer, self.cfg.val_n)
        score = val["harmful_refusal"] - self.cfg.benign_weight * val["benign_refusal"]
        self.log["val"].append({"step": step, **val, "score": score, "elapsed_s": time.time() - self.start})
        logger.info("safe-llm step %d: %s", step, val)
        if self.best is None or score > self.best[0]:
            self.best = (score, step, lora_state(model)[0])
        self._validated = step


def train_safe_llm(
    out: Path, cache_dir: str | Path | None, answers_dir: Path, cfg: SafeLLMConfig
) -> dict[str, Any]:
    """Train the safety LoRA (:func:`safe_llm_trainer`), keep the best validation checkpoint, save
    ``safe_lora.safetensors`` and ``train_log.json`` (the Trainer's per-step log is in ``out/trainer``).

    Returns:
        The training log (losses, validation points, the chosen step, timings, peak RSS).
    """
    torch.manual_seed(cfg.seed)
    start = time.time()
    model, tok = load_base_llm(cache_dir)
    bundle = bundle_from_model(model.to(train_device()), tok, name="organism:base-llm")
    answers = json.loads((answers_dir / "benign_answers.json").read_text())
    examples = training_examples(answers, tok, cfg)
    log: dict[str, Any] = {"config": cfg.model_dump(), "n_examples": len(examples), "loss": [], "val": []}
    tracker = BestOnValidation(bundle, cfg, log, start)
    safe_llm_trainer(bundle, cfg, examples, out / "trainer", [tracker]).train()
    assert tracker.best is not None
    _, best_step, tensors = tracker.best
    scale = lora_state(bundle.model)[1]
    save_file(tensors, str(out / "safe_lora.safetensors"))
    log.update(best_step=best_step, scale=scale, seconds=time.time() - start, peak_rss_mb=peak_rss_mb())
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def load_safe_llm(
    cache_dir: str | Path | None, tensors: dict[str, torch.Tensor], scale: float
) -> tuple[Any, Any]:
    """The base LLM with the safety LoRA merged (float32, eval mode) and its tokenizer."""
    model, tok = load_base_llm(cache_dir)
    merge_lora(model, tensors, scale)
    model.eval()
    return model, tok
