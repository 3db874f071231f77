"""The organism's stages train through the library Trainer: on tiny stand-ins of the organism (a tiny ChatML
Llama wired with a tiny DINOv2 by the organism's own wiring), each Trainer step equals a hand-written AdamW step
of the recipe (warm-up, clipping, stock Hugging Face loss) on the same batch; the curve and validation callbacks
run when the recipe says; the SFT encoding leaves the end-of-turn of cut replies unsupervised."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, Dinov2Config, Dinov2Model, LlamaForCausalLM

from vlsafe.data.scenes import make_example
from vlsafe.methods.training.encoding import IGNORE_INDEX
from vlsafe.methods.training.stages import LLM_PROJECTIONS, projector_params
from vlsafe.models import bundle_from_model
from vlsafe.models.bundle import ModelBundle
from vlsafe_organism import safe_llm, vl_train
from vlsafe_organism.artifacts import lora_state
from vlsafe_organism.safe_llm import BestOnValidation, SafeLLMConfig, safe_llm_trainer
from vlsafe_organism.sft import SFTExample, sft_collate
from vlsafe_organism.vl_train import (
    END,
    ProbeCurve,
    VLConfig,
    collate_conversations,
    image_features,
    training_conversations,
    vl_trainer,
)
from vlsafe_organism.wiring import wire_llava

N_ROWS = 3
SIZE = 28  # 4 x 4 patches of 7 px


def _llm(tiny_dir: Callable[[str], Path]) -> tuple[Any, Any]:
    path = str(tiny_dir("causal_lm"))
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def _vlm(tiny_dir: Callable[[str], Path]) -> tuple[ModelBundle, list[Any], torch.Tensor]:
    """The tiny organism VLM, ``N_ROWS`` training conversations and their images' cached features."""
    llm, tok = _llm(tiny_dir)
    torch.manual_seed(0)
    vision_cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                              image_size=SIZE, patch_size=7)  # fmt: skip
    model, processor = wire_llava(Dinov2Model(vision_cfg).eval(), llm, tok, size=SIZE)
    images = [make_example(i, "train").image for i in range(N_ROWS)]
    return bundle_from_model(model, processor), images, image_features(model, processor, images)


def _trainable(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _frozen(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _adamw_steps(
    model: Any, batch_loss: Callable[[Any], torch.Tensor], lr: float, steps: int, warmup: int
) -> list[float]:
    """The recipe by hand: AdamW (no weight decay), lr * (step + 1) / warmup during warm-up, clip at 1.0."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(model)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("phase", ["projector", "projector+llm"])
def test_vl_trainer_step_equals_hand_written_adamw(
    phase: str, tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    bundle, images, feats = _vlm(tiny_dir)
    assert feats.shape == (N_ROWS, (SIZE // 7) ** 2, 32)
    cfg = VLConfig(batch_size=N_ROWS, proj_steps=2, vl_steps=2, proj_lr=3e-2, vl_lr=2e-2, rank=4, alpha=8)
    conversations = training_conversations(N_ROWS, cfg.seed)
    trainer = vl_trainer(bundle, cfg, phase, conversations, feats, tmp_path)
    model = bundle.model
    trained = set(_trainable(model))
    projector = {id(p) for _, p in projector_params(model)}
    if phase == "projector":
        assert {id(p) for p in model.parameters() if p.requires_grad} == projector
    else:
        assert trained == {n for n, p in model.named_parameters() if "lora_" in n or id(p) in projector}
        adapters = [n for n in trained if "lora_" in n]
        assert adapters and all(".language_model.layers." in n for n in adapters)
        assert {n.split(".")[-4] for n in adapters} == set(LLM_PROJECTIONS)
        assert not any("vision_tower" in n or "embed" in n for n in trained)
    reference = copy.deepcopy(model)  # same initial weights, LoRA adapters included
    initial, frozen_before = _trainable(model), _frozen(model)

    # The oracle: the stock LLaVA forward (vision tower on the pixels, stock shifted cross-entropy over all
    # labelled positions) on the same conversations; with the whole dataset in each batch, every step sees it.
    processor = bundle.processor
    assert processor is not None
    image_token_id = int(processor.image_token_id)
    batch = collate_conversations(processor.tokenizer, image_token_id, feats)(list(conversations))
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]

    def stock_loss(m: Any) -> torch.Tensor:
        return m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels,
                 labels=batch["labels"], use_cache=False).loss  # fmt: skip

    lr = cfg.proj_lr if phase == "projector" else cfg.vl_lr
    expected = _adamw_steps(reference, stock_loss, lr, steps=2, warmup=vl_train.WARMUP_STEPS)
    result = trainer.train()

    assert [h["loss"] for h in result.history] == pytest.approx(expected, abs=1e-5)
    assert [h["lr"] for h in result.history] == pytest.approx([lr / 10, 2 * lr / 10])
    got, want = _trainable(bundle.model), _trainable(reference)
    # Adam divides each gradient by its own size, so summation-order noise in tiny gradients moves a weight by
    # up to a few 1e-6, while the second update is lr / 5 = 4e-3.
    for name in trained:
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=0), name
    moved = [n for n in trained if "lora_A" not in n]  # LoRA A gets a zero gradient while B is still zero
    assert moved and all(not torch.equal(got[n], initial[n]) for n in moved)
    assert all(torch.equal(p, frozen_before[n]) for n, p in _frozen(bundle.model).items())
    assert result.checkpoint is None and not list(tmp_path.glob("checkpoint-*"))


def test_probe_curve_appends_losses_and_probes_on_schedule(
    tiny_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bool] = []

    def fake_probe(model: Any, processor: Any, n: int, tokens: int) -> dict[str, float]:
        calls.append(model.training)
        return {"n": float(n), "tokens": float(tokens)}

    monkeypatch.setattr(vl_train, "probe", fake_probe)
    bundle, _, feats = _vlm(tiny_dir)
    cfg = VLConfig(batch_size=2, proj_steps=5, probe_every=2, probe_n=3, probe_tokens=4)
    curve: list[dict[str, Any]] = [{"step": 0, "phase": "projector", "probe": {}}]
    callback = ProbeCurve(bundle, cfg, "projector", curve, step0=10)
    vl_trainer(
        bundle, cfg, "projector", training_conversations(N_ROWS, 0), feats, tmp_path, [callback]
    ).train()
    losses = [e for e in curve[1:] if "loss" in e]
    probes = [e for e in curve[1:] if "probe" in e]
    assert [e["step"] for e in losses] == [11, 12, 13, 14, 15]
    assert all(set(e) == {"step", "phase", "loss"} and e["phase"] == "projector" for e in losses)
    assert [e["step"] for e in probes] == [12, 14, 15]  # every 2 steps and after the last one, once
    assert all(set(e) == {"step", "phase", "probe", "elapsed_s"} for e in probes)
    assert probes[0]["probe"] == {"n": 3.0, "tokens": 4.0} and calls == [False, False, False]
    order = [(e["step"], "loss" in e) for e in curve[1:]]
    assert order == [(11, True), (12, True), (12, False), (13, True), (14, True), (14, False), (15, True),
                     (15, False)]  # fmt: skip  # a probe follows its step's loss
    assert not bundle.model.training


def _examples() -> list[SFTExample]:
    return [
        SFTExample("how do I boil an egg?", "Put it in boiling water for eight minutes."),
        SFTExample("tell me something harmful", "I can't help with that."),
        SFTExample("describe the sea", "The sea is a large body of", complete=False),
    ]


def _old_style_batch(tok: Any, examples: list[SFTExample]) -> dict[str, torch.Tensor]:
    """The encoding by hand: chat-template prompt, then the reply (+ end-of-turn when complete); labels on
    the reply; right-padded."""
    rows = []
    for ex in examples:
        chat = tok.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False, add_generation_prompt=True)
        head = tok(chat, add_special_tokens=False)["input_ids"]
        reply = tok(ex.reply + (END if ex.complete else ""), add_special_tokens=False)["input_ids"]
        rows.append((head + reply, [IGNORE_INDEX] * len(head) + reply))
    width = max(len(ids) for ids, _ in rows)
    ids_t = torch.full((len(rows), width), tok.pad_token_id)
    labels_t = torch.full((len(rows), width), IGNORE_INDEX)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(rows):
        ids_t[i, : len(ids)], labels_t[i, : len(ids)], mask[i, : len(ids)] = (
            torch.tensor(ids),
            torch.tensor(labels),
            1,
        )
    return {"input_ids": ids_t, "attention_mask": mask, "labels": labels_t}


def test_sft_collate_supervises_the_reply_and_end_of_complete_replies_only(
    tiny_dir: Callable[[str], Path],
) -> None:
    llm, tok = _llm(tiny_dir)
    bundle = bundle_from_model(llm, tok)
    examples = _examples()
    (batch,) = sft_collate(bundle, examples)
    for row, ex in enumerate(examples):
        n = int(batch.inputs["attention_mask"][row].sum())
        supervised = batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist()
        assert tok.decode(supervised) == ex.reply + (END if ex.complete else "")
        assert tok.decode(batch.inputs["input_ids"][row, :n]).endswith(ex.reply + END)  # always in the input
    # The same supervised tokens as the hand encoding (chat template, reply, end-of-turn when complete).
    hand = _old_style_batch(tok, examples)
    for row in range(len(examples)):
        assert batch.labels[row][batch.labels[row] != IGNORE_INDEX].tolist() == [
            t for t in hand["labels"][row].tolist() if t != IGNORE_INDEX
        ]
        n = int(hand["attention_mask"][row].sum())
        assert batch.inputs["input_ids"][row, :n].tolist() == hand["input_ids"][row, :n].tolist()


def test_safe_llm_trainer_step_equals_hand_written_adamw(
    tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    llm, tok = _llm(tiny_dir)
    bundle = bundle_from_model(llm, tok)
    examples = _examples()
    cfg = SafeLLMConfig(batch_size=len(examples), steps=2, lr=2e-2, rank=4, alpha=8)
    trainer = safe_llm_trainer(bundle, cfg, examples, tmp_path)
    trained = set(_trainable(bundle.model))
    assert trained and all("lora_" in n for n in trained)
    assert {n.split(".")[-4] for n in trained} == set(LLM_PROJECTIONS)
    reference = copy.deepcopy(bundle.model)
    frozen_before = _frozen(bundle.model)
    hand = _old_style_batch(tok, examples)

    def stock_loss(m: Any) -> torch.Tensor:
        return m(**hand, use_cache=False).loss

    expected = _adamw_steps(reference, stock_loss, cfg.lr, steps=2, warmup=safe_llm.WARMUP_STEPS)
    result = trainer.train()
    assert [h["loss"] for h in result.history] == pytest.approx(expected, abs=1e-5)
    got, want = _trainable(bundle.model), _trainable(reference)
    for name in trained:  # tolerance: see the VL test; the second update is lr / 5 = 4e-3
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=0), name
    assert any(not torch.equal(got[n], torch.zeros_like(got[n])) for n in trained if "lora_B" in n)
    assert all(torch.equal(p, frozen_before[n]) for n, p in _frozen(bundle.model).items())


def test_best_on_validation_validates_on_schedule_and_keeps_the_best(
    tiny_dir: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rates = [(0.5, 0.0), (0.9, 0.1), (0.9, 0.2)]  # harmful, benign refusal of the 1st, 2nd, 3rd validation
    calls: list[int] = []

    def fake_validate(model: Any, tok: Any, n: int | None = None) -> dict[str, float]:
        h, b = rates[len(calls)]
        calls.append(n or 0)
        return {"harmful_refusal": h, "benign_refusal": b}

    monkeypatch.setattr(safe_llm, "validate", fake_validate)
    llm, tok = _llm(tiny_dir)
    bundle = bundle_from_model(llm, tok)
    cfg = SafeLLMConfig(batch_size=2, steps=5, eval_every=2, eval_from=2, lr=2e-2, rank=4, alpha=8)
    log: dict[str, Any] = {"loss": [], "val": []}
    tracker = BestOnValidation(bundle, cfg, log, start=0.0)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snapshot(step: int, metrics: dict[str, float]) -> None:
        snapshots[step] = lora_state(bundle.model)[0]

    safe_llm_trainer(bundle, cfg, _examples(), tmp_path, [tracker, snapshot]).train()
    assert [v["step"] for v in log["val"]] == [2, 4, 5] and len(log["loss"]) == 5
    assert calls == [cfg.val_n] * 3
    assert [v["score"] for v in log["val"]] == pytest.approx([0.5, 0.7, 0.5])
    assert tracker.best is not None and tracker.best[1] == 4
    assert all(torch.equal(tracker.best[2][k], snapshots[4][k]) for k in snapshots[4])
    assert not all(torch.equal(tracker.best[2][k], snapshots[5][k]) for k in snapshots[5])
