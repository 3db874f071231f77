"""TGA on tiny offline models: spans for every family, guide-loss gradients, the engine's TGA loss against the
plain loss function (oracle), training through the engine for every family, prompt identity, CLI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vlsafe.evals.retrieval import build_retrieval_inputs
from vlsafe.methods.training import (
    TGALoss,
    TGARecord,
    TGATrainer,
    TrainConfig,
    Trainer,
    apply_stage,
    encode_tga_batch,
    language_model,
    load_tga_config,
    projector_params,
    save_trained_model,
    tga_loss_terms,
)
from vlsafe.methods.training.tga import rebuild_trained_model
from vlsafe.models import VLM_FAMILIES, build_inputs, load_model
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.inputs import IMAGE_SLOT


def _fresh(tiny_dir: Callable[[str], Path], family: str) -> ModelBundle:
    return load_model(tiny_dir(family), dtype="float32")


@pytest.mark.parametrize("order", ["text_first", "image_first"])
@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_spans_for_every_family(
    family: str, order: str, tiny_bundle: Callable[[str], ModelBundle], records: list[TGARecord]
) -> None:
    bundle = tiny_bundle(family)
    batch = encode_tga_batch(bundle, records, order=order)
    ids = batch.inputs["input_ids"]
    decode = bundle.tokenizer.decode
    for row, rec in enumerate(records):
        r_ids = ids[row][batch.retrieved_mask[row]]
        if rec.retrieved is None:
            assert r_ids.numel() == 0
        else:
            assert decode(r_ids).strip() == rec.retrieved
            pos = batch.retrieved_mask[row].nonzero().squeeze(1)
            assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[-1]) + 1))  # contiguous
        answer = decode(ids[row][batch.labels[row] != -100])
        assert answer.startswith(rec.answer)
        assert answer[len(rec.answer) :].strip() != ""  # the end-of-turn text is supervised too
        cap = batch.caption_inputs["input_ids"][row][batch.caption_mask[row]]
        assert decode(cap).strip() == rec.caption
        n_img = int(batch.image_mask[row].sum())
        alone = build_inputs(bundle, [{"text": "x", "image": rec.image}], "image").masks.image.sum()
        assert n_img > 0 and n_img == int(alone)  # as many image tokens as the plain prompt of that image
        # the three spans are disjoint; the retrieved text precedes the image (text_first) or follows it
        assert not (batch.image_mask[row] & batch.retrieved_mask[row]).any()
        assert not (batch.image_mask[row] & (batch.labels[row] != -100)).any()
        if rec.retrieved is not None:
            img = batch.image_mask[row].nonzero()
            ret = batch.retrieved_mask[row].nonzero()
            if order == "image_first":
                assert int(img.max()) < int(ret.min())
            else:
                assert int(ret.max()) < int(img.min())
                assert decode(ids[row][int(ret.max()) + 1 : int(img.min())]).startswith(".")  # then the image


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_guide_gradient_reaches_projector_and_guided_layers_only(
    family: str, tiny_dir: Callable[[str], Path], records: list[TGARecord]
) -> None:
    bundle = _fresh(tiny_dir, family)
    bundle.model = apply_stage(bundle.model, "projector_llm")
    batch = encode_tga_batch(bundle, records)
    prefix, _ = language_model(bundle.model)

    def grads(ce_weight: float) -> dict[str, float]:
        bundle.model.zero_grad(set_to_none=True)
        bundle.model.train()
        out = TGALoss(bundle, [0], weight=1.0, ce_weight=ce_weight)(bundle.model, batch, 0)
        out.loss.backward()
        return {
            n: (0.0 if p.grad is None else float(p.grad.abs().sum()))
            for n, p in bundle.model.named_parameters()
            if p.requires_grad
        }

    g = grads(0.0)
    proj = [n for n, _ in projector_params(bundle.model)]
    assert sum(g[n] for n in proj) > 0
    layer0 = [n for n in g if n.startswith(f"{prefix}.layers.0.")]
    layer1 = [n for n in g if n.startswith(f"{prefix}.layers.1.")]
    assert layer0 and layer1
    assert all(g[n] > 0 for n in layer0 if n.endswith(("q_proj.weight", "v_proj.weight", "down_proj.weight")))
    assert all(g[n] == 0.0 for n in layer1)  # nothing after the last guided layer
    # the same check with the CE on does see layer 1 (so the zero above is meaningful)
    g_ce = grads(1.0)
    assert sum(g_ce[n] for n in layer1) > 0
    # activation checkpointing recomputes the layers in backward: same gradients (hooks are gone by then)
    bundle.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g_ckpt = grads(0.0)
    assert g_ckpt == pytest.approx(g, rel=1e-5, abs=1e-7)


def test_guide_gradient_matches_finite_difference(
    tiny_dir: Callable[[str], Path], records: list[TGARecord]
) -> None:
    bundle = _fresh(tiny_dir, "llava")
    bundle.model.double()
    bundle.model = apply_stage(bundle.model, "projector")
    batch = encode_tga_batch(bundle, records)
    batch.inputs["pixel_values"] = batch.inputs["pixel_values"].double()
    loss = TGALoss(bundle, [0, 1], weight=1.0, ce_weight=0.0)
    bundle.model.eval()
    out = loss(bundle.model, batch, 0)
    out.loss.backward()
    bias = next(p for n, p in projector_params(bundle.model) if n.endswith("linear_2.bias"))
    direction = bias.grad / bias.grad.norm()
    eps = 1e-5
    with torch.no_grad():
        bias.add_(eps * direction)
        up = float(loss(bundle.model, batch, 0).loss)
        bias.sub_(2 * eps * direction)
        down = float(loss(bundle.model, batch, 0).loss)
    numeric = (up - down) / (2 * eps)
    assert numeric == pytest.approx(float(bias.grad.norm()), rel=1e-4)


def test_guide_loss_decreases_in_training(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    bundle = _fresh(tiny_dir, "llava")
    cfg = TrainConfig(
        output_dir=tmp_path, stage="projector", max_steps=6, batch_size=2, lr=1e-2, progress=False
    )
    loss = TGALoss(bundle, [0, 1], weight=1.0, ce_weight=0.0)
    result = Trainer(bundle, cfg, loss, records, lambda rows: encode_tga_batch(bundle, rows)).train()
    guide = [h["guide"] for h in result.history]
    assert guide[-1] < guide[0] - 0.05
    assert result.history[-1]["cos_ic"] > result.history[0]["cos_ic"]


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_engine_tga_loss_equals_the_loss_function(
    family: str, tiny_dir: Callable[[str], Path], records: list[TGARecord]
) -> None:
    """The engine's compute_loss (forward passes of the wrapped model, logits at supervised positions only) gives
    the loss, components and gradients of TGALoss (decoder and lm_head called directly, chunked CE)."""
    bundle = _fresh(tiny_dir, family)
    bundle.model = apply_stage(bundle.model, "projector_lora")
    batch = encode_tga_batch(bundle, records)
    loss = TGALoss(bundle, [0, 1], weight=0.7, schedule="linear", max_steps=4, ce_weight=0.9)
    bundle.model.train()
    params = [p for p in bundle.model.parameters() if p.requires_grad]
    old = loss(bundle.model, batch, 1)
    old_grads = torch.autograd.grad(old.loss, params, allow_unused=True)
    new, metrics = tga_loss_terms(loss, bundle.model, batch, 1)
    new_grads = torch.autograd.grad(new, params, allow_unused=True)
    assert float(new.detach()) == pytest.approx(float(old.loss.detach()), rel=1e-5, abs=1e-6)
    for key in ("ce", "guide", "lambda", "cos_ic", "cos_rc"):
        assert metrics[key] == pytest.approx(old.metrics[key], rel=1e-5, abs=1e-6), key
    assert metrics["lambda"] == pytest.approx(0.7 * 0.75)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in new_grads)
    for a, b in zip(old_grads, new_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_tga_trains_through_the_engine_for_every_family(
    family: str, tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    bundle = _fresh(tiny_dir, family)
    cfg = TrainConfig(output_dir=tmp_path, stage="projector", max_steps=4, batch_size=2, lr=2e-2,
                      progress=False, save_final=False)  # fmt: skip
    tga = TGALoss(bundle, [0, 1], weight=1.0, schedule="constant", max_steps=cfg.max_steps)
    trainer = Trainer(bundle, cfg, None, records, lambda rows: encode_tga_batch(bundle, rows),
                      engine_class=TGATrainer, engine_kwargs={"tga": tga})  # fmt: skip
    assert isinstance(trainer.engine, TGATrainer)
    result = trainer.train()
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(k in result.history[0] for k in ("ce", "guide", "cos_ic", "cos_rc", "lambda", "lr", "grad_norm"))


@pytest.mark.parametrize("family", ["llava", "smolvlm"])
def test_retrieval_prompt_identical_at_train_and_inference(
    family: str, tiny_bundle: Callable[[str], ModelBundle], records: list[TGARecord]
) -> None:
    bundle = tiny_bundle(family)
    batch = encode_tga_batch(bundle, records)
    infer = build_retrieval_inputs(
        bundle,
        [r.instruction for r in records],
        [r.image for r in records],
        retrieved=[r.retrieved for r in records],
    )
    assert infer.prompts == batch.prompts
    image = "<image>\n" if family == "llava" else "<image>"  # the template's placeholder, after the text
    assert (
        f"Retrieved Text: knives are sharp tools for cutting food. {image}What is on the table?" in infer.prompts[0]
    )
    for row in range(len(records)):
        train_ids = batch.inputs["input_ids"][row][batch.inputs["attention_mask"][row].bool()]
        first_label = int((batch.labels[row] != -100).nonzero().min()) - int(
            (~batch.inputs["attention_mask"][row].bool()).sum()
        )
        prompt_ids = infer.input_ids[row][infer.inputs["attention_mask"][row].bool()]
        assert torch.equal(train_ids[:first_label], prompt_ids)


def test_cli_train_tga_two_stages_exports_a_loadable_model(
    tiny_dir: Callable[[str], Path], records: list[TGARecord], tmp_path: Path
) -> None:
    from vlsafe.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(r.model_dump_json(exclude={"retrieved"}) + "\n" for r in records))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("bottles of beer on a shelf\na sharp knife for cutting\nclouds in the sky\n")
    cfg = {
        "model": str(tiny_dir("llava")),
        "data": str(data),
        "output_dir": str(tmp_path / "run"),
        "retrieval": {"corpus": str(corpus), "query": "caption"},
        "guide": {"layers": [0], "weight": 0.5, "schedule": "linear"},
        "stages": [
            {"stage": "projector", "max_steps": 2, "batch_size": 2, "lr": 1e-3},
            {"stage": "projector_lora", "max_steps": 2, "batch_size": 2, "lr": 1e-3, "lora": {"rank": 4}},
        ],
    }
    path = tmp_path / "tga.yaml"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["-q", "train", "tga", str(path)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["guided_layers"] == [0]
    assert [s["steps"] for s in summary["stages"]] == [2, 2]
    assert summary["stages"][1]["last"]["lambda"] == pytest.approx(0.25)  # linear decay at step 1 of 2
    used = [json.loads(line) for line in (tmp_path / "run" / "train_records.jsonl").read_text().splitlines()]
    assert used[0]["retrieved"] == "a sharp knife for cutting"
    assert used[1]["retrieved"] == "bottles of beer on a shelf"
    trained = load_model(summary["model_dir"], dtype="float32")
    base = load_model(tiny_dir("llava"), dtype="float32")
    proj_t = dict(projector_params(trained.model))
    proj_b = dict(projector_params(base.model))
    assert any(not torch.equal(proj_t[k], proj_b[k]) for k in proj_b)
    # rerunning resumes every finished stage instead of training again
    res2 = CliRunner().invoke(main, ["-q", "train", "tga", str(path), "--output-dir", str(tmp_path / "run")])
    assert res2.exit_code == 0, res2.output
    lines = (tmp_path / "run" / "stage1-projector_lora" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**cfg, "guide": {"schedule": "cosine"}}))
    res3 = CliRunner().invoke(main, ["train", "tga", str(bad)])
    assert res3.exit_code == 2 and "guide.schedule" in res3.output
    # a rerun under other settings is refused in one line, the run's files untouched
    saved = (tmp_path / "run" / "tga_config.json").read_text()
    for changed, name in (({**cfg, "guide": {**cfg["guide"], "weight": 0.9}}, "guide.weight=0.9"),
                          ({**cfg, "stages": [{**cfg["stages"][0], "lr": 5e-3}, cfg["stages"][1]]}, "lr=0.005")):  # fmt: skip
        path.write_text(json.dumps(changed))
        res4 = CliRunner().invoke(main, ["-q", "train", "tga", str(path)])
        assert res4.exit_code == 2 and name in res4.output and "cannot resume" in res4.output, res4.output
        assert "Traceback" not in res4.output
    assert (tmp_path / "run" / "tga_config.json").read_text() == saved
    # the export a sharded launch rebuilds from the checkpoints equals the in-memory one
    rebuilt = rebuild_trained_model(load_tga_config(tmp_path / "run" / "tga_config.json"))
    merged = save_trained_model(rebuilt, tmp_path / "rebuilt")
    again = load_model(str(merged), dtype="float32").model.state_dict()
    for key, value in trained.model.state_dict().items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=1e-6)


def test_embedding_retriever_from_a_local_encoder(tiny_dir: Callable[[str], Path]) -> None:
    from vlsafe.core.errors import ConfigError
    from vlsafe.data.retrieval import EmbeddingRetriever

    corpus = ["a knife on a table", "three bottles of beer", "a cloudy sky over the sea"]
    retriever = EmbeddingRetriever(corpus, tiny_dir("causal_lm"))
    for text in corpus:  # identical text has cosine 1, the maximum
        assert retriever.retrieve(text, k=1) == [text]
    assert retriever.retrieve(corpus[0], k=1, exclude=corpus[0])[0] in corpus[1:]
    with pytest.raises(ConfigError, match="not a local directory"):
        EmbeddingRetriever(corpus, "some-org/hub-model")


def test_generation_and_eval_samples_use_the_retrieval_prompt(
    tiny_bundle: Callable[[str], ModelBundle], records: list[TGARecord]
) -> None:
    from vlsafe.data.retrieval import BM25Retriever
    from vlsafe.evals.retrieval import generate_with_retrieval, with_retrieval
    from vlsafe.evals.sample import Sample, SampleKind

    bundle = tiny_bundle("llava")
    retriever = BM25Retriever(["bottles of beer", "a sharp knife for cutting bread"])
    replies = generate_with_retrieval(
        bundle, ["Is the knife sharp?"], [records[0].image], retriever, max_new_tokens=3
    )
    assert len(replies) == 1 and isinstance(replies[0], str)
    sample = Sample(id="1", benchmark="x", text="Where is the knife?", kind=SampleKind.HARMFUL)
    (out,) = with_retrieval([sample], retriever)
    assert out.text == f"Retrieved Text: a sharp knife for cutting bread. {IMAGE_SLOT}Where is the knife?"
    (first,) = with_retrieval([sample], retriever, order="image_first")
    assert first.text == "Retrieved Text: a sharp knife for cutting bread. Where is the knife?"
    assert (
        out.metadata["retrieved"] == "a sharp knife for cutting bread"
        and sample.text == "Where is the knife?"
    )
