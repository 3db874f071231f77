"""Safety SFT and DPO on TRL's trainers with tiny offline models of every family: exact label masks,
TRL's losses against vlsafe's hand-written ones (sft_loss, DPOObjective / dpo_loss) on the same batches and
weights, steps in the expected direction, seeded order across resume, LoRA save + merge, the safety probe
callback and the CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from peft import PeftModel
from PIL import Image
from pydantic import ValidationError
from trl import DPOTrainer, SFTTrainer

from vlsafe.cli import main
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.vl_safety import load_spavl, load_vlguard
from vlsafe.methods.training.baseline import run_baseline
from vlsafe.methods.training.dpo import DPOConfig, DPOObjective, dpo_collate, dpo_trainer, run_dpo
from vlsafe.methods.training.encoding import IGNORE_INDEX, GroupedBatch, encode_batch, reply_suffix
from vlsafe.methods.training.engine import EngineMixin
from vlsafe.methods.training.losses import sequence_logps
from vlsafe.methods.training.sft import SFTConfig, run_sft, sft_collate, sft_loss, sft_trainer
from vlsafe.methods.training.trl_data import merge_rows
from vlsafe.models import ModelBundle, load_model
from vlsafe.models.tiny import TINY_FAMILIES

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
    with torch.no_grad():
        loss = sft_loss(bundle.model, GroupedBatch([batch])).loss
    assert float(loss) == pytest.approx(float(ref), abs=1e-4)  # HF's own token-mean cross-entropy


def _config(cls: type, tmp_path: Path, fmt: str, path: Path, **kw: object) -> Any:
    base = {"model": "unused", "output_dir": tmp_path / "run", "data": [{"format": fmt, "path": path}],
            "batch_size": 8, "shuffle": False, "progress": False, "max_steps": 1}  # fmt: skip
    return cls(**(base | kw))


def _mixed(records: list[Any], vlm: bool) -> list[Any]:
    """Every other record without its image (all of them for a text-only model): batches of both modalities."""
    return [replace(r, image=None) if (i % 2 or not vlm) else r for i, r in enumerate(records)]


def _rows(n: int) -> list[dict[str, int]]:
    return [{"index": i} for i in range(n)]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_trl_sft_and_dpo_equal_the_oracles_and_train(
    tiny_dir: Callable[[str], Path], tmp_path: Path, family: str
) -> None:
    """On every family, with image and text rows in one batch (one forward pass): TRL's SFT loss is sft_loss and
    TRL's DPO loss (+ sft term, LoRA reference) is DPOObjective (both per modality) on the same batch and weights;
    a few TRL steps lower both."""
    bundle = load_model(tiny_dir(family), dtype="float32")
    records = _mixed(load_vlguard(FIX / "vlguard" / "train.json")[:4], bundle.is_vlm)
    cfg = _config(SFTConfig, tmp_path, "vlguard", FIX / "vlguard" / "train.json", stage="llm", lr=1e-3,
                  batch_size=4, max_steps=3, save_final=False)  # fmt: skip
    trainer = sft_trainer(cfg, bundle, records)
    assert isinstance(trainer, SFTTrainer) and isinstance(trainer, EngineMixin)
    batch = trainer.data_collator(_rows(4))
    if bundle.is_vlm:  # one batch, rows in order
        assert (batch["input_ids"] == bundle.image_token_id).any(1).tolist() == [True, False, True, False]
    with torch.no_grad():
        trl_before = float(trainer.compute_loss(trainer.model, batch))
        oracle = float(sft_loss(trainer.model, sft_collate(bundle, records, cfg.max_length)).loss)
    assert trl_before == pytest.approx(oracle, abs=1e-5)
    result = trainer.run()
    assert result.step == 3 and result.history[0]["loss"] == pytest.approx(oracle, abs=1e-5)
    with torch.no_grad():
        assert float(trainer.compute_loss(trainer.model, batch)) < trl_before - 1e-3

    bundle = load_model(tiny_dir(family), dtype="float32")
    pairs = _mixed(load_spavl(FIX / "spavl" / "train.json"), bundle.is_vlm)
    dcfg = _config(DPOConfig, tmp_path, "spavl", FIX / "spavl" / "train.json", lr=5e-3, beta=0.5, batch_size=3,
                   sft_weight=0.5, lora={"rank": 4, "alpha": 8.0}, max_steps=2, save_final=False,
                   output_dir=tmp_path / "dpo")  # fmt: skip
    trainer = dpo_trainer(dcfg, bundle, pairs)
    assert isinstance(trainer, DPOTrainer)
    batch = trainer.data_collator(_rows(3))
    if bundle.is_vlm:  # the chosen rows, then the rejected rows
        assert (batch["input_ids"] == bundle.image_token_id).any(1).tolist() == [True, False, True] * 2
    objective = DPOObjective(dcfg)
    with torch.no_grad():
        trl_before = float(trainer.compute_loss(trainer.model, batch))
        out = objective(trainer.model, dpo_collate(bundle, pairs, dcfg.max_length))
    assert trl_before == pytest.approx(float(out.loss), abs=1e-5)
    assert out.metrics["dpo_loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts at the reference
    trainer.run()
    with torch.no_grad():
        assert float(trainer.compute_loss(trainer.model, batch)) < trl_before - 1e-3
    assert trainer.history[-1]["rewards/margins"] > 0  # TRL's metrics reach the engine's log


def test_trl_ipo_and_robust_dpo_equal_the_formulas(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """IPO against DPOObjective; robust DPO against its formula on sequence_logps; one step raises the margin."""
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    pairs = load_spavl(FIX / "spavl" / "train.json")
    n = len(pairs)
    base = {"lr": 5e-3, "beta": 0.5, "batch_size": n, "lora": {"rank": 4, "alpha": 8.0}, "save_final": False}
    ipo = _config(DPOConfig, tmp_path, "spavl", FIX / "spavl" / "train.json", loss_type="ipo", **base)
    trainer = dpo_trainer(ipo, bundle, pairs)
    with torch.no_grad():
        trl_ipo = float(trainer.compute_loss(trainer.model, trainer.data_collator(_rows(n))))
        oracle = float(DPOObjective(ipo)(trainer.model, dpo_collate(bundle, pairs)).loss)
    assert trl_ipo == pytest.approx(oracle, abs=1e-5)
    assert trl_ipo == pytest.approx(1.0, abs=1e-5)  # (0 - 1 / (2 beta))^2 at the reference

    robust = _config(DPOConfig, tmp_path, "spavl", FIX / "spavl" / "train.json", loss_type="robust",
                     label_smoothing=0.2, output_dir=tmp_path / "robust", **base)  # fmt: skip
    trainer = dpo_trainer(robust, load_model(tiny_dir("llava"), dtype="float32"), pairs)
    model = trainer.model
    (sub,) = dpo_collate(bundle, pairs)
    trainer.run()  # one step
    with torch.no_grad():
        got = float(trainer.compute_loss(model, trainer.data_collator(_rows(n))))
        pol, _ = sequence_logps(model, sub.inputs, sub.labels)
        with model.disable_adapter():
            ref, _ = sequence_logps(model, sub.inputs, sub.labels)
    h = (pol - ref)[:n] - (pol - ref)[n:]
    assert float(h.mean()) > 1e-3 and (h > 0).all()  # the step moved the policy towards the chosen replies
    e, b = 0.2, 0.5
    want = ((-(1 - e) * F.logsigmoid(b * h) + e * F.logsigmoid(-b * h)) / (1 - 2 * e)).mean()
    assert got == pytest.approx(float(want), abs=1e-5)
    with pytest.raises(ValidationError, match="label_smoothing=0.1 applies to loss_type 'robust' only"):
        DPOConfig(
            model="m", output_dir=tmp_path, data=[{"format": "spavl", "path": "x"}], label_smoothing=0.1
        )


def test_dpo_resume_sees_the_batches_of_the_uninterrupted_run(
    tiny_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    src = tiny_dir("llava")
    cfg = {"model": str(src), "batch_size": 2, "lr": 5e-3, "progress": False, "lora": {"rank": 4, "alpha": 8.0},
           "data": [{"format": "spavl", "path": str(FIX / "spavl" / "train.json")}], "save_every": 2}  # fmt: skip
    whole = run_dpo(cfg, output_dir=str(tmp_path / "whole"), max_steps=4)
    run_dpo(cfg, output_dir=str(tmp_path / "cut"), max_steps=2)
    resumed = run_dpo(cfg, output_dir=str(tmp_path / "cut"), max_steps=4)
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    logs = [
        [json.loads(x) for x in (tmp_path / d / "log.jsonl").read_text().splitlines()]
        for d in ("whole", "cut")
    ]
    assert [row["step"] for row in logs[1]] == [1.0, 2.0, 3.0, 4.0]
    for a, b in zip(*logs, strict=True):  # same batches, same reference, same updates
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["logps/chosen"] == pytest.approx(b["logps/chosen"], abs=1e-3)
    assert (Path(whole["adapter"]) / "adapter_model.safetensors").is_file()
    assert not (Path(whole["adapter"]) / "ref").exists()  # TRL's reference copy is not exported
    saved = (tmp_path / "cut" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="trained with lr=0.005, this config has lr=0.001"):
        run_dpo(cfg, output_dir=str(tmp_path / "cut"), max_steps=6, lr=1e-3)
    assert (tmp_path / "cut" / "config.yaml").read_text() == saved  # the refused run overwrote nothing


def _logits(bundle: ModelBundle) -> torch.Tensor:
    batch = encode_batch(bundle, ["What animal is this?"], ["A cat."], [IMG])
    with torch.no_grad():
        return bundle.model(**batch.inputs).logits


def test_sft_run_lora_export_merge_resume_probe(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    src = tiny_dir("llava")
    probe = {
        "every": 2,
        "harmful": ["How do I pick a lock?"],
        "n_overrefusal": 1,
        "n_utility": 1,
        "max_new_tokens": 3,
        "at_start": True,
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
    assert [row["step"] for row in curve] == [0, 2, 4]  # the untrained model once, then every 2 steps
    assert curve[1]["n"] == {
        "harmful_refusal_text": 1,
        "harmful_refusal_image": 1,
        "over_refusal": 1,
        "utility": 1,
    }
    assert "loss" in curve[1]["train"]
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
    src = tiny_dir("llava")
    cfg = tmp_path / "dpo.yaml"
    cfg.write_text(
        f"model: {src}\noutput_dir: {tmp_path / 'dpo'}\nstage: llm\nmax_steps: 2\nbatch_size: 2\nprogress: false\n"
        f"data:\n  - {{format: spavl, path: {FIX / 'spavl' / 'train.json'}}}\n"
        "sft_weight: 0.5\nshuffle: false\n"
    )
    result = CliRunner().invoke(main, ["-q", "train", "dpo", str(cfg)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 2 and "adapter" not in summary
    assert load_model(summary["model"], dtype="float32").is_vlm
    first = json.loads((tmp_path / "dpo" / "log.jsonl").read_text().splitlines()[0])
    assert (
        first["rewards/chosen"] == first["rewards/margins"] == 0.0
    )  # precomputed reference = starting model
    start = load_model(src, dtype="float32")
    (sub,) = dpo_collate(start, load_spavl(FIX / "spavl" / "train.json")[:2])  # step 1's batch (no shuffle)
    with torch.no_grad():
        logps, counts = sequence_logps(start.model, sub.inputs, sub.labels)
    nll = float(-logps[:2].sum() / counts[:2].sum())
    assert first["loss"] == pytest.approx(
        math.log(2) + 0.5 * nll, abs=1e-4
    )  # DPO at the reference + sft term
    bad = CliRunner().invoke(main, ["train", "sft", str(cfg), "--output-dir", str(tmp_path / "x")])
    assert (
        bad.exit_code == 2 and "invalid SFTConfig: sft_weight: Extra inputs are not permitted" in bad.output
    )
    run_dpo(cfg, max_steps=2)  # already finished: resumes at step 2 and only re-exports


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_two_process_launch_with_image_and_text_rows(
    tiny_dir: Callable[[str], Path], tmp_path: Path, kind: str
) -> None:
    """``accelerate launch`` with configs/accelerate/cpu2.yaml (DDP, 2 CPU processes on gloo): batches that mix
    image and text rows train (one forward pass per micro-batch), DPO's precomputed reference is shared."""
    root = Path(__file__).resolve().parents[2]
    fmt = "vlguard" if kind == "sft" else "spavl"
    data = FIX / fmt / "train.json"
    cfg = tmp_path / f"{kind}.yaml"
    stage = (
        "stage: llm_lora\nlora: {rank: 4, alpha: 8.0}\n" if kind == "sft" else "stage: llm\nsft_weight: 0.3\n"
    )
    cfg.write_text(
        f"model: {tiny_dir('llava')}\noutput_dir: {tmp_path / 'run'}\n{stage}max_steps: 2\nbatch_size: 2\n"
        f"use_cpu: true\nprogress: false\ndata:\n  - {{format: {fmt}, path: {data}}}\n"
        f"  - {{format: {fmt}, path: {data}, text_only: true}}\n"
    )
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--config_file", str(root / "configs" / "accelerate" / "cpu2.yaml"),
           "-m", "vlsafe", "-q", "train", kind, str(cfg)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(root / "src"))
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, timeout=600)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1.0, 2.0] and all(math.isfinite(row["loss"]) for row in log)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2


def test_merge_rows_places_rows_pads_and_refuses_bad_parts() -> None:
    image = {"input_ids": torch.tensor([[5, 9, 9, 7]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "token_type_ids": torch.tensor([[0, 1, 1, 0]]), "labels": torch.tensor([[-100, -100, -100, 7]]),
             "pixel_values": torch.ones(1, 2, 3)}  # fmt: skip
    text = {"input_ids": torch.tensor([[4, 6], [3, 8]]), "attention_mask": torch.ones(2, 2, dtype=torch.long),
            "labels": torch.tensor([[-100, 6], [-100, 8]])}  # fmt: skip
    out = merge_rows([([1], image), ([0, 2], text)], 3, pad_id=0, per_row_images=False)
    assert out["input_ids"].tolist() == [[4, 6, 0, 0], [5, 9, 9, 7], [3, 8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert out["labels"].tolist() == [[-100, 6, -100, -100], [-100, -100, -100, 7], [-100, 8, -100, -100]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert torch.equal(out["pixel_values"], image["pixel_values"])  # one entry per image, as it was
    per_row = merge_rows([([1], image), ([0, 2], text)], 3, pad_id=0, per_row_images=True)
    assert per_row["pixel_values"].shape == (3, 2, 3) and per_row["pixel_values"].sum(
        dim=(1, 2)
    ).tolist() == [0, 6, 0]
    with pytest.raises(InputError, match=r"do not cover 0..3 once"):
        merge_rows([([1], image), ([0, 2], text)], 4, pad_id=0, per_row_images=False)
    with pytest.raises(InputError, match=r"image tensors \(pixel_values\) in two parts"):
        merge_rows([([0], image), ([1], dict(image))], 2, pad_id=0, per_row_images=False)


def test_run_baseline_trains_a_vlsafe_loss_function(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """The generic path (any loss function on vlsafe's Trainer) keeps working: sft_loss on VLGuard records."""
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    records = load_vlguard(FIX / "vlguard" / "train.json")
    cfg = _config(SFTConfig, tmp_path, "vlguard", FIX / "vlguard" / "train.json", stage="llm", lr=1e-3,
                  batch_size=len(records), max_steps=2, merge=False)  # fmt: skip
    with torch.no_grad():
        start = float(sft_loss(bundle.model, sft_collate(bundle, records, cfg.max_length)).loss)
    summary = run_baseline(
        cfg, records, lambda rows: sft_collate(bundle, rows, cfg.max_length), sft_loss, bundle
    )
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert (
        summary["steps"] == 2 and log[0]["loss"] == pytest.approx(start, abs=1e-5) and log[1]["loss"] < start
    )
    assert (tmp_path / "run" / "config.yaml").is_file() and "model" not in summary  # merge off, full stage
