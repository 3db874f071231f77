"""Answer-only loss equals the stock loss (value and gradient) and trains in the library Trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlsafe.core.errors import InputError
from vlsafe.methods.training.memory import answer_only_loss
from vlsafe.methods.training.trainer import LossOutput, TrainConfig, Trainer
from vlsafe.models.bundle import ModelBundle


def _tiny_llm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _batch():
    ids = torch.randint(3, 97, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 6:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 7:12] = ids[0, 7:12]
    labels[1, 5:9] = ids[1, 5:9]
    labels[2, 3:6] = ids[2, 3:6]
    return {"input_ids": ids, "attention_mask": mask}, labels


@pytest.mark.parametrize("chunk", [1, 4, 256])
def test_answer_only_loss_matches_stock_loss_and_gradient(chunk):
    model = _tiny_llm()
    batch, labels = _batch()
    ref = model(**batch, labels=labels).loss
    ref.backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    got = answer_only_loss(model, batch, labels, chunk_size=chunk)
    got.backward()
    assert torch.allclose(got, ref, atol=1e-6)
    assert torch.allclose(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-6)


def test_answer_only_loss_needs_supervision():
    model = _tiny_llm()
    batch, labels = _batch()
    with pytest.raises(InputError, match="no supervised position"):
        answer_only_loss(model, batch, torch.full_like(labels, -100))


def test_answer_only_loss_trains_in_the_trainer_with_frozen_embeddings(tmp_path: Path) -> None:
    model = _tiny_llm()
    bundle = ModelBundle(
        model=model, tokenizer=None, processor=None, family="causal_lm", layers=model.model.layers
    )
    batch, labels = _batch()
    records = [{k: v[i] for k, v in {**batch, "labels": labels}.items()} for i in range(3)]

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def loss_fn(m: torch.nn.Module, b: dict[str, torch.Tensor], step: int) -> LossOutput:
        return LossOutput(answer_only_loss(m, {k: v for k, v in b.items() if k != "labels"}, b["labels"], 2))

    emb = model.get_input_embeddings().weight.detach().clone()
    layer = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    cfg = TrainConfig(output_dir=tmp_path, stage="llm", max_steps=5, batch_size=3, grad_accum=1, lr=1e-2,
                      shuffle=False, save_final=False, resume="never", progress=False)  # fmt: skip
    history = Trainer(bundle, cfg, loss_fn, records, collate).train().history
    losses = [h["loss"] for h in history]
    assert losses[-1] < losses[0]
    with torch.no_grad():  # the logged loss is the stock loss of the weights before each step
        assert model(**batch, labels=labels).loss < losses[-1]
    assert not model.get_input_embeddings().weight.requires_grad  # tied with lm_head: both frozen
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, layer)
