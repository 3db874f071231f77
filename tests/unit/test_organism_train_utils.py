"""Answer-only loss equals the stock loss; padding trimming; embedding freezing."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlsafe.core.errors import InputError
from vlsafe.methods.training.memory import answer_only_loss, freeze_embeddings, train_step, trim_padding


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


def test_trim_padding_removes_only_all_padding_columns():
    ids = torch.arange(12).view(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    out = trim_padding({"input_ids": ids, "attention_mask": mask, "pixel_values": torch.zeros(2, 3, 4, 4)})
    assert out["input_ids"].shape == (2, 4) and torch.equal(out["attention_mask"], mask[:, :4])
    assert out["pixel_values"].shape == (2, 3, 4, 4)
    left = trim_padding({"attention_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])})
    assert left["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]


def test_freeze_embeddings_and_train_step_lower_the_loss():
    model = _tiny_llm()
    frozen = freeze_embeddings(model)
    assert frozen == 97 * 32  # tied: counted once
    assert not model.get_input_embeddings().weight.requires_grad
    batch, labels = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    emb = model.get_input_embeddings().weight.clone()
    losses = [train_step(model, {**batch, "labels": labels}, opt) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert torch.equal(model.get_input_embeddings().weight, emb)
    with pytest.raises(InputError, match="labels"):
        train_step(model, batch, opt)
