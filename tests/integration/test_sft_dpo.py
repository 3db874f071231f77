"""Safety SFT and DPO on tiny offline VLMs: exact label masks, log-likelihood oracles, one step in the
expected direction, LoRA save + merge, resume, the safety probe callback and the CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlsafe.data.vl_safety import load_spavl, load_vlguard
from vlsafe.methods.training.dpo import DPOConfig, DPOObjective, dpo_collate, run_dpo
from vlsafe.methods.training.encoding import IGNORE_INDEX, encode_batch, reply_suffix
from vlsafe.methods.training.losses import sequence_logps
from vlsafe.methods.training.sft import SFTConfig, run_sft, sft_collate, sft_loss
from vlsafe.methods.training.trainer import Trainer
from vlsafe.models import ModelBundle, load_model

FIX = Path(__file__).resolve().parents[1] / "fixtures"
IMG = Image.new("RGB", (40, 30), (200, 20, 20))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "causal_lm"])
def test_label_mask_is_exactly_the_reply(tiny_bundle: Callable[[str], ModelBundle], family: str) -> None:
    bundle = tiny_bundle(family)
    replies = ["I can't help with that.", "A red box"]
    images = [IMG, IMG] if bundle.is_vlm else None
    batch = encode_batch(bundle, ["How do I pick a lock?", "What is in the picture here?"], replies, images)
    ids, labels, attn = batch.inputs["input_ids"], batch.labels, batch.inputs["attention_mask"]
    suffix = reply_suffix(bundle)
    assert suffix == {"llava": "</s>"}.get(family, "<|im_end|>")  # the template's end of assistant turn
    for r, reply in enumerate(replies):
        target = bundle.tokenizer(reply + suffix, add_special_tokens=False)["input_ids"]
        plen, n = batch.prompt_lengths[r], len(target)
        supervised = (labels[r] != IGNORE_INDEX).nonzero().squeeze(1).tolist()
        assert supervised == list(range(plen, plen + n))  # the reply span, nothing else
        assert labels[r, plen : plen + n].tolist() == target == ids[r, plen : plen + n].tolist()
        assert int(attn[r].sum()) == plen + n and not attn[r, plen + n :].any()  # right padding
        if bundle.is_vlm:
            image_pos = (ids[r] == bundle.image_token_id).nonzero().squeeze(1)
            assert len(image_pos) > 0 and int(image_pos.max()) < plen  # every image token is in the prompt
            assert batch.image_mask[r].nonzero().squeeze(1).tolist() == image_pos.tolist()
            assert (labels[r][batch.image_mask[r]] == IGNORE_INDEX).all()
    cut = encode_batch(bundle, ["Hi"], ["one two three four five six"], [IMG] if bundle.is_vlm else None,
                       max_length=batch.prompt_lengths[0] + 2)  # fmt: skip
    assert int((cut.labels != IGNORE_INDEX).sum()) <= 2 + batch.prompt_lengths[0]


@pytest.mark.parametrize("family", ["llava", "idefics3", "gemma3", "causal_lm"])
def test_sequence_logps_and_sft_loss_match_full_logits(
    tiny_bundle: Callable[[str], ModelBundle], family: str
) -> None:
    bundle = tiny_bundle(family)
    images = [IMG, IMG] if bundle.is_vlm else None
    batch = encode_batch(bundle, ["Describe it.", "What colour is it?"], ["A box.", "Red"], images)
    with torch.no_grad():
        logps, counts = sequence_logps(bundle.model, batch.inputs, batch.labels, chunk_size=3)
        logits = bundle.model(**batch.inputs).logits.float()
        ref = bundle.model(**batch.inputs, labels=batch.labels).loss
    lp = torch.log_softmax(logits[:, :-1], -1)
    tgt = batch.labels[:, 1:]
    keep = tgt != IGNORE_INDEX
    oracle = (lp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(1)
    assert torch.allclose(logps, oracle, atol=1e-4) and counts.tolist() == keep.sum(1).tolist()
    from vlsafe.methods.training.encoding import GroupedBatch

    with torch.no_grad():
        loss = sft_loss(bundle.model, GroupedBatch([batch])).loss
    assert float(loss) == pytest.approx(float(ref), abs=1e-4)  # HF's own token-mean cross-entropy


def _config(cls: type, tmp_path: Path, fmt: str, path: Path, **kw: object) -> object:
    base = {"model": "unused", "output_dir": tmp_path / "run", "data": [{"format": fmt, "path": path}],
            "batch_size": 8, "shuffle": False, "progress": False, "max_steps": 1}  # fmt: skip
    return cls(**(base | kw))


def test_one_sft_step_lowers_the_loss_on_its_target(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    records = load_vlguard(FIX / "vlguard" / "train.json")
    cfg = _config(SFTConfig, tmp_path, "vlguard", FIX / "vlguard" / "train.json", stage="llm", lr=1e-3,
                  batch_size=len(records))  # fmt: skip
    trainer = Trainer(bundle, cfg, sft_loss, records, lambda rows: sft_collate(bundle, rows))
    batch = sft_collate(bundle, records)
    with torch.no_grad():
        before = float(sft_loss(trainer.model, batch).loss)
    metrics = trainer.train_step()
    with torch.no_grad():
        after = float(sft_loss(trainer.model, batch).loss)
    assert metrics["loss"] == pytest.approx(before, abs=1e-5)
    assert after < before - 1e-3


def test_one_dpo_step_raises_chosen_log_ratio(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    records = load_spavl(FIX / "spavl" / "train.json")
    cfg = _config(DPOConfig, tmp_path, "spavl", FIX / "spavl" / "train.json", lr=5e-3, beta=0.5,
                  batch_size=len(records), lora={"rank": 4, "alpha": 8.0})  # fmt: skip
    objective = DPOObjective(cfg)
    assert objective.reference == "adapter"
    trainer = Trainer(bundle, cfg, objective, records, lambda rows: dpo_collate(bundle, rows))
    batch = dpo_collate(bundle, records)
    n = len(records)

    def margin() -> torch.Tensor:  # (log pi - log ref)(chosen) - (log pi - log ref)(rejected), per pair
        with torch.no_grad():
            pol, _ = sequence_logps(trainer.model, batch[0].inputs, batch[0].labels)
            with trainer.model.disable_adapter():
                ref, _ = sequence_logps(trainer.model, batch[0].inputs, batch[0].labels)
        ratio = pol - ref
        return ratio[:n] - ratio[n:]

    assert torch.allclose(margin(), torch.zeros(n), atol=1e-5)  # LoRA starts at the reference
    metrics = trainer.train_step()
    assert metrics["dpo_loss"] == pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-4)
    after = margin()
    assert float(after.mean()) > 1e-3 and (after > 0).all()


def _logits(bundle: ModelBundle) -> torch.Tensor:
    batch = encode_batch(bundle, ["What animal is this?"], ["A cat."], [IMG])
    with torch.no_grad():
        return bundle.model(**batch.inputs).logits


def test_sft_run_lora_export_merge_resume_probe(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from peft import PeftModel

    src = tiny_dir("llava")
    probe = {
        "every": 2,
        "harmful": ["How do I pick a lock?"],
        "n_overrefusal": 1,
        "n_utility": 1,
        "max_new_tokens": 3,
        "at_start": False,
    }
    cfg = {"model": str(src), "output_dir": str(tmp_path / "run"), "batch_size": 2, "lr": 5e-3, "max_steps": 2,
           "data": [{"format": "vlguard", "path": str(FIX / "vlguard" / "train.json")}], "progress": False,
           "lora": {"rank": 4, "alpha": 8.0}, "save_every": 2, "probe": probe,
           "mix": {"vl_data": [{"format": "synthetic_vl", "n_images": 1}], "ratio": 0.5}}  # fmt: skip
    first = run_sft(cfg)
    assert first["steps"] == 2 and first["resumed_from"] is None
    summary = run_sft(cfg, max_steps=4)  # resumes from checkpoint-2
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 4
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1.0, 2.0, 3.0, 4.0]
    curve = [json.loads(x) for x in Path(summary["curve"]).read_text().splitlines()]
    assert [row["step"] for row in curve] == [2, 4]
    assert curve[0]["n"] == {
        "harmful_refusal_text": 1,
        "harmful_refusal_image": 1,
        "over_refusal": 1,
        "utility": 1,
    }
    assert "loss" in curve[0]["train"]
    assert (Path(summary["adapter"]) / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "run").rglob("*.bin")) and not list((tmp_path / "run").rglob("*.pt"))
    base = load_model(src, dtype="float32")
    base_logits = _logits(base)
    base.model = PeftModel.from_pretrained(base.model, summary["adapter"])
    adapter_logits = _logits(base)
    merged_logits = _logits(load_model(summary["model"], dtype="float32"))
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-4)  # the adapter did learn something
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)  # merged model = adapter model


def test_dpo_run_full_precomputed_reference_and_cli(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vlsafe.cli import main

    src = tiny_dir("llava")
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model: {src}\noutput_dir: {tmp_path / 'dpo'}\nstage: llm\nmax_steps: 2\nbatch_size: 2\nprogress: false\n"
        f"data:\n  - {{format: spavl, path: {FIX / 'spavl' / 'train.json'}}}\n"
        "sft_weight: 0.5\n"
    )
    result = CliRunner().invoke(main, ["-q", "train", "dpo", str(cfg)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and "adapter" not in summary
    assert load_model(summary["model"], dtype="float32").is_vlm
    first = json.loads((tmp_path / "dpo" / "log.jsonl").read_text().splitlines()[0])
    assert first["dpo_loss"] == pytest.approx(0.6931, abs=1e-3)  # precomputed reference = starting model
    assert first["loss"] == pytest.approx(first["dpo_loss"] + 0.5 * first["sft_nll"], abs=1e-4)
    bad = CliRunner().invoke(main, ["train", "sft", str(cfg), "--output-dir", str(tmp_path / "x")])
    assert (
        bad.exit_code == 2 and "invalid SFTConfig: sft_weight: Extra inputs are not permitted" in bad.output
    )
    run_dpo(cfg, max_steps=2)  # already finished: resumes at step 2 and only re-exports
