"""Stage 1 of the organism: the safe LLM (SmolLM2-135M-Instruct + a safety LoRA, merged).

Training data (ids in ``artifacts/splits.json``): harmful prompts -> varied refusals; form-matched benign,
templated benign and scary-but-harmless prompts -> the base model's own greedy answers (the opening
``answer_tokens`` tokens, generated once and cached). The checkpoint is chosen on the validation split by
``harmful refusal - 2 x benign refusal``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from tqdm import tqdm

from vlsafe.methods.training.memory import peak_rss_mb, prepare_for_training, train_step
from vlsafe_organism import safety_data as sd
from vlsafe_organism.probe import PROBE_TOKENS, generate, refusal_rate
from vlsafe_organism.sft import SFTExample, batches, collate, encode
from vlsafe_organism.stages import train_device

logger = logging.getLogger(__name__)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
    """Generate and save the base model's greedy answers to the benign training prompts."""
    from vlsafe_organism.base import load_base_llm

    torch.manual_seed(cfg.seed)
    model, tok = load_base_llm(cache_dir)
    prompts = benign_train_prompts()
    answers = generate(model, tok, [p.text for p in prompts], None, cfg.answer_tokens, 32, "benign answers")
    rows = [{"id": p.id, "prompt": p.text, "answer": a} for p, a in zip(prompts, answers, strict=True)]
    (out / "benign_answers.json").write_text(json.dumps(rows, indent=1))


def _examples(answers: list[dict[str, Any]], tok: Any, cfg: SafeLLMConfig) -> list[SFTExample]:
    harmful = sd.load_split("harmful_train")[: cfg.n_harmful]
    out = [SFTExample(p.text, sd.refusal_for(p.id)) for p in harmful]
    for row in answers:
        n_tok = len(tok(row["answer"], add_special_tokens=False)["input_ids"])
        out.append(SFTExample(row["prompt"], row["answer"].rstrip(), complete=n_tok < cfg.answer_tokens - 1))
    return out


def validate(model: Any, tok: Any, n: int | None = None) -> dict[str, float]:
    """Keyword refusal rates on the validation split (text-only)."""
    h = [p.text for p in sd.load_split("harmful_val")][:n]
    b = [p.text for p in sd.load_split("benign_val")][:n]
    replies = generate(model, tok, h + b, None, PROBE_TOKENS, 20)
    return {
        "harmful_refusal": refusal_rate(replies[: len(h)]),
        "benign_refusal": refusal_rate(replies[len(h) :]),
    }


def train_safe_llm(
    out: Path, cache_dir: str | Path | None, answers_dir: Path, cfg: SafeLLMConfig
) -> dict[str, Any]:
    """Train the safety LoRA, keep the best validation checkpoint, save ``safe_lora.safetensors``.

    Returns:
        The training log (losses, validation points, the chosen step, timings, peak RSS).
    """
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    from vlsafe_organism.artifacts import lora_state
    from vlsafe_organism.base import load_base_llm

    torch.manual_seed(cfg.seed)
    start = time.time()
    model, tok = load_base_llm(cache_dir)
    dev = train_device()
    model.to(dev)
    tok.pad_token = tok.pad_token or tok.eos_token
    answers = json.loads((answers_dir / "benign_answers.json").read_text())
    examples = _examples(answers, tok, cfg)
    encoded = [encode(tok, ex) for ex in examples]
    lcfg = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=LORA_TARGETS)
    model = prepare_for_training(get_peft_model(model, lcfg), gradient_checkpointing=False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    log: dict[str, Any] = {"config": cfg.model_dump(), "n_examples": len(examples), "loss": [], "val": []}
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    bar = tqdm(
        enumerate(batches(len(encoded), cfg.batch_size, cfg.steps, cfg.seed)),
        total=cfg.steps,
        desc="safe-llm",
    )
    for step, idx in bar:
        batch = {k: v.to(dev) for k, v in collate([encoded[i] for i in idx], tok.pad_token_id).items()}
        loss = train_step(model, batch, opt)
        sched.step()
        log["loss"].append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
        due = (step + 1) % cfg.eval_every == 0 and step + 1 >= cfg.eval_from
        if due or step + 1 == cfg.steps:
            val = validate(model, tok, cfg.val_n)
            score = val["harmful_refusal"] - cfg.benign_weight * val["benign_refusal"]
            log["val"].append({"step": step + 1, **val, "score": score, "elapsed_s": time.time() - start})
            logger.info("safe-llm step %d: %s", step + 1, val)
            if best is None or score > best[0]:
                best = (score, step + 1, lora_state(model)[0])
    assert best is not None
    tensors, scale = best[2], lora_state(model)[1]
    save_file(tensors, str(out / "safe_lora.safetensors"))
    log.update(best_step=best[1], scale=scale, seconds=time.time() - start, peak_rss_mb=peak_rss_mb())
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return log


def load_safe_llm(
    cache_dir: str | Path | None, tensors: dict[str, torch.Tensor], scale: float
) -> tuple[Any, Any]:
    """The base LLM with the safety LoRA merged (float32, eval mode) and its tokenizer."""
    from vlsafe_organism.artifacts import merge_lora
    from vlsafe_organism.base import load_base_llm

    model, tok = load_base_llm(cache_dir)
    merge_lora(model, tensors, scale)
    model.eval()
    return model, tok
