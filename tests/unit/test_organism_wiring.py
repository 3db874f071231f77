"""LLaVA wiring on tiny stand-ins: token budget, chat template, forward/generate, save/load round trip."""

from __future__ import annotations

import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from vlsafe.data.scenes import make_example
from vlsafe.models import load_model
from vlsafe_organism.wiring import IMAGE_TOKEN, save_vlm, wire_llava

WORDS = [
    "<unk>",
    "<|im_start|>",
    "<|im_end|>",
    "system",
    "user",
    "assistant",
    "what",
    "colour",
    "is",
    "it",
    "?",
    "\n",
]


def _tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(r"(<\|im_start\|>|<\|im_end\|>|\n|\?| )", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return fast


def _parts(vision_layers: int = 1):
    torch.manual_seed(0)
    vision = Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=vision_layers, num_attention_heads=1, mlp_ratio=2,
                                      image_size=224, patch_size=14)).eval()  # fmt: skip
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                       eos_token_id=2, bos_token_id=1)).eval()  # fmt: skip
    return vision, llm, _tokenizer()


def test_wired_llava_places_256_image_tokens_and_runs(tmp_path):
    vision, llm, tok = _parts()
    model, proc = wire_llava(vision, llm, tok, seed=1)
    assert proc.image_token_id == len(WORDS) and model.config.image_token_id == len(WORDS)
    assert model.get_input_embeddings().weight.shape[0] == len(WORDS) + 1
    assert model.config.vision_feature_select_strategy == "default" and model.config.image_seq_length == 256
    # The language model and vision tower carry the given weights.
    assert torch.equal(
        model.model.language_model.layers[1].mlp.up_proj.weight, llm.model.layers[1].mlp.up_proj.weight
    )
    assert torch.equal(model.model.vision_tower.embeddings.cls_token, vision.embeddings.cls_token)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is it?"}]}]
    prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt.endswith(
        f"<|im_start|>user\n{IMAGE_TOKEN}\nwhat colour is it?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert prompt.startswith("<|im_start|>system\n")
    image = make_example(0).image.resize((300, 200))
    inputs = proc(images=[image], text=[prompt], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 224, 224)
    assert int((inputs["input_ids"] == proc.image_token_id).sum()) == 256
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=inputs["pixel_values"])
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert torch.cat(list(feats)).reshape(-1, 32).shape[0] == 256  # CLS dropped
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    save_vlm(model, proc, tmp_path / "vlm")
    loaded = load_model(tmp_path / "vlm", dtype="float32")  # a saved organism VLM is an ordinary LLaVA directory
    model2, proc2 = loaded.model, loaded.processor
    inputs2 = proc2(
        images=[image],
        text=[proc2.apply_chat_template(msgs, add_generation_prompt=True)],
        return_tensors="pt",
    )
    assert all(torch.equal(inputs[k], inputs2[k]) for k in inputs)
    with torch.no_grad():
        assert torch.allclose(model2(**inputs2).logits, logits, atol=1e-5)


def test_processor_keeps_image_edges_and_normalises_like_dinov2():
    vision, llm, tok = _parts()
    _, proc = wire_llava(vision, llm, tok)
    img = Image.new("RGB", (224, 224), (255, 255, 255))
    img.paste((0, 0, 0), (0, 0, 14, 224))  # a black stripe on the left edge must survive (no centre crop)
    px = proc.image_processor(images=[img], return_tensors="pt")["pixel_values"][0]
    assert torch.allclose(px[0, 100, 3], torch.tensor((0 - 0.485) / 0.229), atol=1e-3)
    assert torch.allclose(px[0, 100, 200], torch.tensor((1 - 0.485) / 0.229), atol=1e-3)


def test_feature_layer_selects_the_vision_layer_the_projector_reads():
    vision, llm, tok = _parts(vision_layers=2)
    model, proc = wire_llava(vision, llm, tok, seed=1, feature_layer=1)
    assert model.config.vision_feature_layer == 1
    pix = proc.image_processor([make_example(0).image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = model.get_image_features(pixel_values=pix)
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        hidden = vision(pix, output_hidden_states=True).hidden_states
        expected = model.model.multi_modal_projector(hidden[1][:, 1:])  # layer 1 of 2, CLS dropped
        other = model.model.multi_modal_projector(hidden[-1][:, 1:])
    got = torch.cat(list(feats)).reshape(expected.shape)
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got - other).abs().max() > 100 * (got - expected).abs().max()  # the last layer is another input
