"""The VL recipe's mix: text-only conversations (LLaVA-1.5's text share) and pictogram conversations beside the
scene conversations, encoded and batched with them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, Dinov2Config, Dinov2Model, LlamaForCausalLM

from vlsafe.data.scenes import make_example
from vlsafe.evals.judges.keyword import KeywordJudge
from vlsafe.methods.training.encoding import IGNORE_INDEX
from vlsafe_organism import vl_mix
from vlsafe_organism.safety_data import Prompt
from vlsafe_organism.vl_mix import (
    NO_IMAGE,
    TextMix,
    n_text_conversations,
    pictogram_training,
    text_conversations,
)
from vlsafe_organism.vl_train import (
    END,
    Conversation,
    VLConfig,
    collate_conversations,
    encode_conversation,
    image_features,
    training_conversations,
    vl_loss,
)
from vlsafe_organism.wiring import wire_llava

SIZE = 28


def _vlm(tiny_dir: Callable[[str], Path]) -> tuple[object, object, torch.Tensor]:
    path = str(tiny_dir("causal_lm"))
    llm, tok = (
        LlamaForCausalLM.from_pretrained(path, dtype=torch.float32),
        AutoTokenizer.from_pretrained(path),
    )
    torch.manual_seed(0)
    vision_cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                              image_size=SIZE, patch_size=7)  # fmt: skip
    model, processor = wire_llava(Dinov2Model(vision_cfg).eval(), llm, tok, size=SIZE)
    images = [make_example(i, "train").image for i in range(3)]
    return model, processor, image_features(model, processor, images)


def test_text_share_counts_and_order():
    assert n_text_conversations(2000, 0.0) == 0
    assert n_text_conversations(2000, 0.06) == 128  # 128 / 2128 = 6.0 %
    assert round(128 / (2000 + n_text_conversations(2000, 0.06)), 3) == 0.06
    mix = TextMix([("a?", "A."), ("b?", "B."), ("c?", "C.")], refused=1, blank=0)
    picked = text_conversations(mix, 7, seed=0)
    assert len(picked) == 7 and picked == text_conversations(mix, 7, seed=0)
    assert sorted(picked.count(t) for t in mix.turns) == [2, 2, 3]  # each answer about equally often
    assert text_conversations(TextMix([], 3, 0), 5, seed=0) == []
    with pytest.raises(ValueError):
        VLConfig(text_fraction=1.0)


def test_pictogram_training_is_benign_and_seeded():
    rows = pictogram_training(5, seed=0)
    assert [k for k, _ in rows] == list(range(5)) and rows == pictogram_training(5, seed=0)
    for _, turns in rows:
        assert all(reply.endswith(".") for _, reply in turns)
        assert not any(
            w in (q + r).lower() for q, r in turns for w in ("how to make", "instructions", "sorry")
        )


def test_text_only_conversation_has_no_image_and_supervises_the_reply(tiny_dir):
    model, processor, feats = _vlm(tiny_dir)
    tok = processor.tokenizer
    image_id = int(processor.image_token_id)
    text_conv = Conversation(NO_IMAGE, (("How do I boil an egg?", "Boil it."),))
    ids, labels = encode_conversation(tok, text_conv, image_id, 16)
    assert image_id not in ids and len(ids) == len(labels)
    supervised = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert supervised == "Boil it." + END + "\n"
    image_ids, _ = encode_conversation(tok, training_conversations(2, 0)[1], image_id, 16)
    assert image_ids.count(image_id) == 16


def test_mixed_batch_scatters_each_image_row_its_own_features(tiny_dir):
    """A text-only row before an image row must not shift the projected features onto the wrong row: the loss
    of a mixed batch does not depend on the order of its rows."""
    model, processor, feats = _vlm(tiny_dir)
    image_id = int(processor.image_token_id)
    collate = collate_conversations(processor.tokenizer, image_id, feats)
    image_conv = training_conversations(3, 0)[2]  # features row 2, not the text row's placeholder row 0
    text_conv = Conversation(NO_IMAGE, (("Name a fruit.", "An apple."),))
    model.eval()
    with torch.no_grad():
        a = collate([image_conv, text_conv])
        b = collate([text_conv, image_conv])
        la = vl_loss(model, a, a["image_features"], image_id)
        lb = vl_loss(model, b, b["image_features"], image_id)
        # the image row given the text row's placeholder features (what scattering every row's would do)
        lw = vl_loss(model, b, feats[[0, 0]], image_id)
    assert torch.allclose(la, lb, atol=1e-6) and not torch.allclose(la, lw, atol=1e-6)


def test_text_answers_come_from_the_model_as_text_and_drop_refusals(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model, processor, _ = _vlm(tiny_dir)
    model.config.use_cache = False
    model.train()
    monkeypatch.setattr(vl_mix, "benign_train_prompts", lambda: [Prompt(f"benign:{i}", q, "benign") for i, q in
                        enumerate(("Name a fruit.", "Name a colour.", "Name a tree."))])  # fmt: skip
    mix = vl_mix.text_answers(model, processor, tmp_path / "answers", max_new_tokens=3)
    assert len(mix.turns) + mix.refused + mix.blank == 3 and mix.refused == 0
    assert [q for q, _ in mix.turns] == ["Name a fruit.", "Name a colour.", "Name a tree."][: len(mix.turns)]
    assert model.training and model.config.use_cache is False  # the training state is given back
    records = [json.loads(x) for x in (tmp_path / "answers" / "samples.jsonl").read_text().splitlines()]
    assert {r["image"] for r in records} == {None} and all(r["image_setting"] == "none" for r in records)
    judge_all = KeywordJudge(keywords=["a", "e", "i", "o", "u", "n"], window=None)
    monkeypatch.setattr(vl_mix, "KeywordJudge", lambda: judge_all)  # every non-blank answer now "refuses"
    refusing = vl_mix.text_answers(model, processor, tmp_path / "answers", max_new_tokens=3)
    assert refusing.turns == [] and refusing.refused + refusing.blank == 3
