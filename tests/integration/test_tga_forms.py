"""The three TGA loss forms against values computed by hand on a tiny LLaVA, their gradients, and the retrieval
prompt's token ids at training and at evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from vlsafe.core.errors import ConfigError
from vlsafe.data.retrieval import BM25Retriever
from vlsafe.evals.generation import prepare
from vlsafe.evals.retrieval import with_retrieval
from vlsafe.evals.sample import ImageSetting, Sample, SampleKind
from vlsafe.methods.training import (
    TGALoss,
    TGARecord,
    apply_stage,
    encode_tga_batch,
    projector_params,
    tga_loss_terms,
)
from vlsafe.methods.training.memory import answer_only_loss
from vlsafe.models import build_inputs, load_model
from vlsafe.models.bundle import ModelBundle
from vlsafe.models.structure import decoder_and_head


def _llava_without_final_norm(tiny_dir: Callable[[str], Path]) -> ModelBundle:
    """The tiny LLaVA (2 decoder layers) with its final norm replaced by the identity, so that
    ``hidden_states[j + 1]`` is the output of decoder layer ``j`` for every layer, the last one included."""
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    decoder, _ = decoder_and_head(bundle.model)
    decoder.language_model.norm = nn.Identity()
    bundle.model.eval()
    return bundle


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double(), b.double()
    na, nb = math.sqrt(float(a64 @ a64)), math.sqrt(float(b64 @ b64))
    return float(a64 @ b64) / max(na * nb, 1e-8)


def _by_hand(bundle: ModelBundle, batch: object, layers: list[int]) -> tuple[float, list[list[tuple[float, float]]]]:
    """The answer cross-entropy and, per layer and row, (cos(I, C), cos(R, C)) from ``output_hidden_states``."""
    with torch.no_grad():
        out = bundle.model(**batch.inputs, output_hidden_states=True, use_cache=False)  # type: ignore[attr-defined]
        cap = bundle.model(**batch.caption_inputs, output_hidden_states=True, use_cache=False)  # type: ignore[attr-defined]
    labels = batch.labels  # type: ignore[attr-defined]
    logp = torch.log_softmax(out.logits.double(), dim=-1)
    nll = [-float(logp[b, t - 1, labels[b, t]]) for b in range(labels.shape[0]) for t in range(1, labels.shape[1])
           if int(labels[b, t]) != -100]  # fmt: skip
    ce = sum(nll) / len(nll)
    cosines = []
    for j in layers:
        h, hc = out.hidden_states[j + 1], cap.hidden_states[j + 1]
        rows = []
        for b in range(labels.shape[0]):
            image = h[b][batch.image_mask[b]].mean(0)  # type: ignore[attr-defined]
            caption = hc[b][batch.caption_mask[b]].mean(0)  # type: ignore[attr-defined]
            r_mask = batch.retrieved_mask[b]  # type: ignore[attr-defined]
            rc = _cos(h[b][r_mask].mean(0), caption) if bool(r_mask.any()) else float("nan")
            rows.append((_cos(image, caption), rc))
        cosines.append(rows)
    return ce, cosines


def test_each_form_matches_the_hand_computed_loss(
    tiny_dir: Callable[[str], Path], records: list[TGARecord]
) -> None:
    bundle = _llava_without_final_norm(tiny_dir)
    batch = encode_tga_batch(bundle, records)
    layers, weight, step, max_steps = [0, 1], 0.7, 1, 4
    ce, cos = _by_hand(bundle, batch, layers)
    t = step / max_steps
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    paper = sum(
        sum(-ic + (softplus(rc - ic) if not math.isnan(rc) else 0.0) for ic, rc in rows) / len(rows) for rows in cos
    )
    released = sum(
        sum(0.25 * (1 - t) * math.exp(-ic) + (0.1 * (1 - t) ** 2 * math.exp(rc - ic) if not math.isnan(rc) else 0.0)
            for ic, rc in rows) / len(rows)
        for rows in cos
    ) / len(layers)  # fmt: skip
    expected = {
        "paper": (ce + weight * (1 - t) * paper, paper, weight * (1 - t)),  # its default schedule: linear
        "released": (ce + weight * released, released, weight),  # (1 - t) is in its terms
        "released-no-grad": (ce + weight * released, released, weight),
    }
    for form, (total, guide, lam) in expected.items():
        loss = TGALoss(bundle, layers, weight=weight, schedule=None, max_steps=max_steps, form=form)
        out = loss(bundle.model, batch, step)
        assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5), form
        assert out.metrics["guide"] == pytest.approx(guide, rel=1e-5), form
        assert out.metrics["lambda"] == pytest.approx(lam), form
        assert out.metrics["ce"] == pytest.approx(ce, rel=1e-5), form
        ic_mean = sum(ic for rows in cos for ic, _ in rows) / (len(layers) * len(records))
        assert out.metrics["cos_ic"] == pytest.approx(ic_mean, rel=1e-5), form
        engine, metrics = tga_loss_terms(loss, bundle.model, batch, step)  # the engine's path, same value
        assert float(engine.detach()) == pytest.approx(total, rel=1e-5), form
        assert metrics["guide"] == pytest.approx(guide, rel=1e-5), form
    # the released schedule: at the end of the stage the released terms vanish, the paper's λ too
    end = {f: TGALoss(bundle, layers, schedule=None, max_steps=4, form=f)(bundle.model, batch, 4) for f in expected}
    for form, out in end.items():
        assert float(out.loss.detach()) == pytest.approx(ce, rel=1e-5), form


def _grads(bundle: ModelBundle, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = [(n, p) for n, p in bundle.model.named_parameters() if p.requires_grad]
    got = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(params, got, strict=True)}


def test_guide_gradients_per_form(tiny_dir: Callable[[str], Path], records: list[TGARecord]) -> None:
    bundle = _llava_without_final_norm(tiny_dir)
    bundle.model = apply_stage(bundle.model, "projector_llm")
    batch = encode_tga_batch(bundle, records)
    proj = [n for n, _ in projector_params(bundle.model)]
    guide_only = {}
    for form in ("paper", "released", "released-no-grad"):
        out = TGALoss(bundle, [0], weight=1.0, ce_weight=0.0, max_steps=4, form=form)(bundle.model, batch, 1)
        guide_only[form] = _grads(bundle, out.loss)
    for form in ("paper", "released"):  # the guide terms reach the projector and the guided layer
        g = guide_only[form]
        assert sum(float(g[n].abs().sum()) for n in proj) > 0, form
        assert any(float(v.abs().sum()) > 0 for n, v in g.items() if ".layers.0." in n), form
        assert all(float(v.abs().sum()) == 0 for n, v in g.items() if ".layers.1." in n), form  # after the guide
    assert all(float(v.abs().sum()) == 0 for v in guide_only["released-no-grad"].values())  # exactly zero
    # with the cross-entropy on, released-no-grad's gradient is the cross-entropy's, bit for bit
    ce_grads = _grads(bundle, answer_only_loss(bundle.model, batch.inputs, batch.labels))
    full = TGALoss(bundle, [0, 1], weight=1.0, max_steps=4, form="released-no-grad")(bundle.model, batch, 1)
    full_grads = _grads(bundle, full.loss)
    assert any(float(v.abs().sum()) > 0 for v in ce_grads.values())
    for name, value in ce_grads.items():
        assert torch.equal(full_grads[name], value), name
    # and the released form's gradient differs from it (its guide terms carry gradient)
    released = TGALoss(bundle, [0, 1], weight=1.0, max_steps=4, form="released")(bundle.model, batch, 1)
    assert any(not torch.equal(g, ce_grads[n]) for n, g in _grads(bundle, released.loss).items())


def test_unknown_form_is_a_config_error(tiny_bundle: Callable[[str], ModelBundle]) -> None:
    with pytest.raises(ConfigError, match=r"guide form 'cosine' is unknown; it must be one of paper, released"):
        TGALoss(tiny_bundle("llava"), [0], form="cosine")


@pytest.mark.parametrize("order", ["text_first", "image_first"])
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_training_row_and_eval_prompt_have_the_same_token_ids(
    family: str, order: str, tiny_bundle: Callable[[str], ModelBundle], records: list[TGARecord]
) -> None:
    """The prompt tokens of a TGA training row equal those the evaluation runner builds for the same item with
    retrieval (sample -> with_retrieval -> prepare -> build_inputs, as ``vlsafe eval --retrieval-corpus``)."""
    bundle = tiny_bundle(family)
    rec = records[0]
    assert rec.image is not None and rec.retrieved is not None
    batch = encode_tga_batch(bundle, [rec], order=order)
    keep = batch.inputs["attention_mask"][0].bool()
    row_ids = batch.inputs["input_ids"][0][keep]
    first_answer = int((batch.labels[0][keep] != -100).nonzero().min())
    train_prompt = row_ids[:first_answer].tolist()

    image = Path(rec.image)
    sample = Sample(id="1", benchmark="x", text=rec.instruction, kind=SampleKind.HARMFUL, image=image.name,
                    image_setting=ImageSetting.PROVIDED)  # fmt: skip
    retriever = BM25Retriever([rec.retrieved, "three green bottles of beer", "a cloudy sky"])
    (shown,) = with_retrieval([sample], retriever, order=order)
    prepared = prepare(shown, ImageSetting.PROVIDED, image.parent, seed=0)
    assert prepared.image is not None and prepared.text is not None
    built = build_inputs(bundle, [prepared.text], "image", images=[prepared.image])
    eval_prompt = built.input_ids[0][built.masks.attention[0]].tolist()
    assert eval_prompt == train_prompt
    torch.testing.assert_close(built.inputs["pixel_values"], batch.inputs["pixel_values"], rtol=0, atol=0)
    text = bundle.tokenizer.decode(eval_prompt)
    r = f"Retrieved Text: {rec.retrieved}."
    image_at = text.index("<image>") if family == "llava" else text.index("<|vision_start|>")
    assert (text.index(r) < image_at) == (order == "text_first")
    if family == "llava" and order == "text_first":  # the released prompt (before the image's expansion)
        assert built.prompts[0] == f"USER: {r} <image>\n{rec.instruction} ASSISTANT:"
