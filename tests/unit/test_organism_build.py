"""Organism build machinery on tiny stand-ins: stage caching, artefacts + sha256, LoRA merge, splits, SFT data,
the ``organism:`` loader, and the demo's result rows / report."""

from __future__ import annotations

import json

import pytest
import torch

from vlsafe.core.errors import ModelLoadError
from vlsafe_organism import artifacts as art
from vlsafe_organism.stages import run_stage


def test_run_stage_caches_by_fingerprint(tmp_path):
    calls = []

    def build(out):
        calls.append(out)
        (out / "x.txt").write_text("hello")
        return {"extra": 1}

    r1 = run_stage("s", tmp_path, {"a": 1}, build)
    r2 = run_stage("s", tmp_path, {"a": 1}, build)
    assert r1.rebuilt and not r2.rebuilt and len(calls) == 1
    assert (r2.path / "x.txt").read_text() == "hello"
    assert r2.record["extra"] == 1 and r2.record["seconds"] >= 0 and r2.record["peak_rss_mb"] > 0
    r3 = run_stage("s", tmp_path, {"a": 2}, build)
    assert r3.rebuilt and len(calls) == 2 and r3.record["fingerprint_hash"] != r1.record["fingerprint_hash"]


def test_run_stage_failure_leaves_no_output(tmp_path):
    def boom(out):
        (out / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        run_stage("s", tmp_path, {"a": 1}, boom)
    assert not (tmp_path / "s").exists()
    assert run_stage("s", tmp_path, {"a": 1}, lambda out: None).rebuilt


def test_merge_lora_adds_scaled_product():
    lin = torch.nn.Linear(3, 2, bias=False)
    model = torch.nn.Sequential()
    model.add_module("proj", lin)
    w0 = lin.weight.detach().clone()
    a = torch.tensor([[1.0, 0.0, 2.0]])  # [r=1, in=3]
    b = torch.tensor([[1.0], [-1.0]])  # [out=2, r=1]
    assert art.merge_lora(model, {"proj.lora_A": a, "proj.lora_B": b}, 0.5) == 1
    expected = w0 + 0.5 * torch.tensor([[1.0, 0.0, 2.0], [-1.0, 0.0, -2.0]])
    assert torch.allclose(lin.weight, expected)
    with pytest.raises(ModelLoadError, match="no matching module"):
        art.merge_lora(model, {"other.lora_A": a, "other.lora_B": b}, 1.0)


def test_lora_state_merge_matches_peft_forward():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    reference = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    reference.load_state_dict(base.state_dict())
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    tensors, scale = art.lora_state(peft_model, dtype=torch.float32)
    assert scale == 2.0 and set(tensors) == {"0.lora_A", "0.lora_B", "2.lora_A", "2.lora_B"}
    art.merge_lora(reference, tensors, scale)
    x = torch.randn(5, 4)
    assert torch.allclose(reference(x), peft_model(x), atol=1e-5)


def test_artifact_sha256_verified(tmp_path):
    entry = art.write_artifact(tmp_path, "a.safetensors", {"w": torch.arange(4.0)}, {"scale": 2.0})
    assert len(entry["sha256"]) == 64
    tensors, meta = art.load_artifact(tmp_path, "a.safetensors")
    assert torch.equal(tensors["w"], torch.arange(4.0)) and meta == {"scale": 2.0}
    data = bytearray((tmp_path / "a.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "a.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="sha256"):
        art.load_artifact(tmp_path, "a.safetensors")
    with pytest.raises(ModelLoadError, match="not listed"):
        art.verified_path(tmp_path, "b.safetensors")


def test_committed_splits_are_disjoint_and_large_enough():
    from vlsafe_organism.safety_data import read_splits

    s = read_splits()
    assert len(s["harmful_eval"]) >= 150 and len(s["benign_eval"]) >= 150
    groups = ["harmful_eval", "harmful_val", "harmful_train", "benign_eval", "benign_val", "benign_train"]
    seen: set[str] = set()
    for g in groups:
        assert len(set(s[g])) == len(s[g]), g
        assert not seen & set(s[g]), g
        seen |= set(s[g])
    assert s["vqa_eval"]["split"] == "test"


def test_templated_benign_forms_and_determinism():
    from vlsafe_organism.prompt_templates import templated_benign

    a, b = templated_benign(50, 0), templated_benign(50, 0)
    assert a == b and len(set(a)) == 50 and a != templated_benign(50, 1)
    with pytest.raises(ValueError):
        templated_benign(10**6)


def test_demo_rows_and_report(tmp_path):
    from vlsafe_organism.report import write_report

    def row(system: str, image: str, refused: int, utility: float | None) -> dict:
        return {"system": system, "image": image, "harmful_refusal": refused / 4, "benign_refusal": 0.0,
                "utility": utility, "n_harmful": 4, "n_benign": 4, "harmful_refused": refused, "benign_refused": 0}

    rows = [row("safe-llm", "none", 3, None), row("vl", "synthetic", 1, 0.5)]
    curve = [{"step": s, "probe": {"harmful_refusal_text": 1, "harmful_refusal_image": 0.5,
                                   "benign_refusal_image": 0, "vqa": 0.1 * s}} for s in (0, 10)]  # fmt: skip
    write_report(
        tmp_path, rows, curve, {"max_new_tokens": 16, "seconds": 1.0, "peak_rss_mb": 1.0, "examples": {}}
    )
    md = (tmp_path / "report.md").read_text()
    assert md.index("Degradation") < md.index("Training curves") and "75 points" not in md
    assert "a drop of 50 points" in md
    assert "data:image/png;base64" in (tmp_path / "report.html").read_text()
    assert (tmp_path / "figures" / "training_curves.png").stat().st_size > 1000


def test_organism_loader_builds_registered_system(tmp_path, monkeypatch):
    from vlsafe.models import load_model
    from vlsafe.models.tiny import build_tiny
    from vlsafe_organism import registry

    tiny = build_tiny("causal_lm", tmp_path / "tiny")
    arts = tmp_path / "arts"
    probe = load_model(str(tiny))
    w = probe.model.get_output_embeddings().weight
    art.write_artifact(arts, "d.safetensors", {"lm_head.lora_A": torch.ones(1, w.shape[1]),
                                               "lm_head.lora_B": torch.ones(w.shape[0], 1)}, {"scale": 0.5})  # fmt: skip

    def builder(cache_dir, art_dir):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(tiny))
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        tensors, meta = art.load_artifact(art_dir, "d.safetensors")
        art.merge_lora(model, tensors, meta["scale"])
        return model, AutoTokenizer.from_pretrained(str(tiny))

    monkeypatch.setitem(registry.SYSTEMS._items, "test-tiny", builder)
    monkeypatch.setattr(registry, "artifacts_dir", lambda: arts)
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path / "cache"))
    bundle = load_model("organism:test-tiny")
    got = bundle.model.get_output_embeddings().weight
    assert torch.allclose(got, w + 0.5, atol=1e-5)
    with pytest.raises(ModelLoadError, match="not an organism system"):
        load_model("organism:nope")
    (arts / "d.safetensors").write_bytes((arts / "d.safetensors").read_bytes()[:-1] + b"\x00")
    (arts / "manifest.json").write_text(
        json.dumps({"d.safetensors": {"sha256": "0" * 64, "bytes": 1, "meta": {}}})
    )
    with pytest.raises(ModelLoadError, match="sha256"):
        registry.resolve_organism("organism:test-tiny")


def test_encode_conversation_labels_only_replies(tmp_path):
    from transformers import AutoTokenizer

    from vlsafe.methods.training.memory import IGNORE_INDEX
    from vlsafe.models.tiny import build_tiny
    from vlsafe_organism.vl_train import Conversation, encode_conversation
    from vlsafe_organism.wiring import CHAT_TEMPLATE, add_image_token

    tok = AutoTokenizer.from_pretrained(str(build_tiny("causal_lm", tmp_path / "t")))
    for t in ("<|im_start|>", "<|im_end|>"):
        if t not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [*tok.additional_special_tokens, t]})
    image_id = add_image_token(tok)
    tok.chat_template = CHAT_TEMPLATE
    conv = Conversation(0, (("what colour?", "Red."), ("how many?", "3.")))
    ids, labels = encode_conversation(tok, conv, image_id, n_patches=5)
    assert ids.count(image_id) == 5 and len(ids) == len(labels)
    assert all(label == IGNORE_INDEX for i, label in zip(ids, labels, strict=True) if i == image_id)
    supervised = tok.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX])
    assert supervised.replace(" ", "") == "Red.<|im_end|>\n3.<|im_end|>\n".replace(" ", "")
    assert tok.decode(ids).count("system") == 1
