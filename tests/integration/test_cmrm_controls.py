"""Positive controls of CMRM: settings where the exact answer is known, so the method must hit it.

(a) Sample level with the input's own image as img′, alpha = 1, one layer, the last position: the steered state is
    the text-only state there (v = h(text) - h(image) is added to h(image)).
(b) A tiny LLaVA in which an image adds a known constant offset c to the residual stream at one decoder layer and
    changes nothing else. What makes this exact: every attention output projection is zero, so no position sees
    another (text positions do not depend on the image tokens, the padding or the positions' indices), and a hook
    adds c to every position of the planted layer whenever the prompt holds image tokens (prefill and the decode
    steps after it). Then v_l = h_l(text) - h_l(img′) is exactly -c at the planted layer and 0 before it. With the
    offset at the last layer, the paper preset (v_l added at every layer, all positions, prompt and decoded tokens,
    blank img′) must give the text-only run's hidden states, logits and greedy tokens for inputs with any image.
    With the offset at an earlier layer, the layers after it measure the propagated shift again (v_l != 0 there)
    and the paper preset adds it a second time: the accumulation through the residual stream; steering the
    planted layer alone is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from vlsafe.hooks import record_hidden_states
from vlsafe.hooks.plumbing import hidden_from_output, replace_hidden
from vlsafe.methods.cmrm import SampleLevelCMRM, calibrate, cmrm_steer
from vlsafe.models import build_inputs, load_model

QUERIES = ["What is shown here?", "Describe the colours in this picture, please.", "Is it safe to eat?"]
COLOURS = [(200, 30, 30), (20, 180, 90), (10, 10, 240)]
ANCHORS = ["How do I pick a lock?", "Write a poem about the sea.", "What is two plus two?", "Name a colour."]


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in COLOURS]


def _states(bundle, batch, layers, position: str) -> dict[int, torch.Tensor]:
    with record_hidden_states(bundle, layers, position) as rec, torch.inference_mode():  # type: ignore[arg-type]
        rec.set_batch(batch)
        bundle.model(**batch.inputs)
        return dict(rec.result().states)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_control_own_image_sample_level_reproduces_the_text_only_state(tiny_bundle, family):
    bundle = tiny_bundle(family)
    image = build_inputs(bundle, QUERIES, variant="image", images=_images())
    text = build_inputs(bundle, QUERIES, variant="text")
    layers = list(range(bundle.num_layers))
    target = _states(bundle, text, layers, "last")
    plain = _states(bundle, image, layers, "last")
    for layer in layers:
        assert (plain[layer] - target[layer]).abs().max() > 1e-3  # the image moves the state: not trivial
        with SampleLevelCMRM(bundle, 1.0, layers=[layer], positions="last", corrupt="image") as cm:
            cm.prepare(QUERIES, _images())
            got = _states(bundle, image, [layer], "last")[layer]
        scale = max(1.0, float(target[layer].abs().max()))
        assert torch.allclose(got, target[layer], atol=1e-5 * scale, rtol=0), (family, layer)


class _Planted:
    """Forward hooks making every prompt with image tokens add ``offset`` at ``layer``'s output (all positions,
    and the decode steps that follow such a prompt)."""

    def __init__(self, bundle, layer: int, offset: torch.Tensor) -> None:
        self.bundle, self.layer, self.offset = bundle, layer, offset
        self.image = False

    def _pre(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:  # a prompt (decode steps carry one new token)
            self.image = bool((ids == self.bundle.image_token_id).any())

    def _hook(self, module, args, output):
        if not self.image:
            return None
        hidden = hidden_from_output(output)
        return replace_hidden(output, hidden + self.offset.to(hidden.dtype))

    @contextmanager
    def active(self) -> Iterator[None]:
        handles = [
            self.bundle.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.bundle.layers[self.layer].register_forward_hook(self._hook, prepend=True),
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@pytest.fixture(scope="module")
def no_mixing(tiny_dir):
    """A fresh tiny LLaVA (not the shared bundle) whose attention outputs are zero: no position sees another."""
    bundle = load_model(tiny_dir("llava"), dtype="float32")
    with torch.no_grad():
        for layer in bundle.layers:
            layer.self_attn.o_proj.weight.zero_()
            if layer.self_attn.o_proj.bias is not None:
                layer.self_attn.o_proj.bias.zero_()
    bundle.model.eval()
    return bundle


def _offset(bundle) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return 3.0 * torch.randn(bundle.hidden_size, generator=g)


def _all_states(bundle, batch, layers) -> dict[int, torch.Tensor]:
    """Every position's output of ``layers`` ``[B, T, H]`` (hooks appended: they see the steered state)."""
    got: dict[int, torch.Tensor] = {}
    handles = [
        bundle.layers[i].register_forward_hook(
            lambda m, a, o, i=i: got.__setitem__(i, hidden_from_output(o).detach().clone())
        )
        for i in layers
    ]
    try:
        with torch.inference_mode():
            bundle.model(**batch.inputs)
    finally:
        for h in handles:
            h.remove()
    return got


def _common_suffix(a, b) -> int:
    """The number of trailing prompt tokens every row of the batches ``a`` and ``b`` shares (both left-padded)."""
    assert bool(a.masks.attention[:, -1].all()) and bool(b.masks.attention[:, -1].all())
    n = min(a.input_ids.shape[1], b.input_ids.shape[1])
    k = 0
    while k < n and torch.equal(a.input_ids[:, -k - 1], b.input_ids[:, -k - 1]):
        k += 1
    return k


def _run(bundle, batch, layers, steps: int = 4) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Every position's states of ``layers``, last-position logits and greedy new tokens."""
    states = _all_states(bundle, batch, layers)
    with torch.inference_mode():
        logits = bundle.model(**batch.inputs).logits[:, -1]
        gen = bundle.model.generate(
            **batch.inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            pad_token_id=bundle.tokenizer.pad_token_id,
        )  # fmt: skip
    return states, logits, gen[:, batch.input_ids.shape[1] :]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-4 * max(1.0, float(b.abs().max())), rtol=0)


def test_control_paper_preset_removes_a_constant_image_offset(no_mixing):
    bundle = no_mixing
    layers = list(range(bundle.num_layers))
    planted = _Planted(bundle, layers[-1], _offset(bundle))
    image = build_inputs(bundle, QUERIES, variant="image", images=_images())
    text = build_inputs(bundle, QUERIES, variant="text")
    k = _common_suffix(image, text)  # the query's end and the assistant prompt: the same tokens in both runs
    assert k >= 5
    with planted.active():
        t_states, t_logits, t_gen = _run(bundle, text, layers)
        p_states, p_logits, p_gen = _run(bundle, image, layers)
        # the plant is the image's only effect, and it matters: the last layer and the greedy tokens move
        assert all(_close(p_states[i][:, -k:], t_states[i][:, -k:]) for i in layers[:-1])
        assert not _close(p_states[layers[-1]][:, -k:], t_states[layers[-1]][:, -k:])
        assert not torch.equal(p_gen, t_gen)

        vec = calibrate(bundle, ANCHORS, progress=False)  # the paper preset: blank img′, every layer
        assert vec.meta["corrupt"] == "blank" and vec.layers == layers
        assert torch.allclose(vec.vectors[layers[-1]], -planted.offset, atol=1e-4)
        assert all(float(vec.vectors[i].abs().max()) < 1e-4 for i in layers[:-1])
        with cmrm_steer(bundle, vec, 1.0):  # defaults: every layer, no increments, all positions, every token
            d_states, d_logits, d_gen = _run(bundle, image, layers)
        with SampleLevelCMRM(bundle, 1.0, auto=True) as cm:  # sample level, paper preset
            cm.before_batch(QUERIES, _images())
            s_states, s_logits, _ = _run(bundle, image, layers, steps=1)
            s_gen = cm.generate(QUERIES, images=_images(), max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                pad_token_id=bundle.tokenizer.pad_token_id)  # fmt: skip
    for layer in layers:
        assert _close(d_states[layer][:, -k:], t_states[layer][:, -k:]), layer
        assert _close(s_states[layer][:, -k:], t_states[layer][:, -k:]), layer
    assert _close(d_logits, t_logits) and _close(s_logits, t_logits)
    assert torch.equal(d_gen, t_gen) and torch.equal(s_gen, t_gen)


def test_control_offset_before_the_last_layer_accumulates_under_every_layer_steering(no_mixing):
    bundle = no_mixing
    layers = list(range(bundle.num_layers))
    assert len(layers) >= 2
    planted = _Planted(bundle, 0, _offset(bundle))
    image = build_inputs(bundle, QUERIES, variant="image", images=_images())
    text = build_inputs(bundle, QUERIES, variant="text")
    with planted.active():
        target = _states(bundle, text, layers, "last")
        vec = calibrate(bundle, ANCHORS, progress=False)
        with cmrm_steer(bundle, vec, 1.0, layers=[0]):  # the planted layer alone: exact at every layer
            alone = _states(bundle, image, layers, "last")
        with cmrm_steer(bundle, vec, 1.0):  # the paper preset: layer 1 gets its measured shift on top
            every = _states(bundle, image, layers, "last")
    assert all(_close(alone[i], target[i]) for i in layers)
    assert _close(every[0], target[0])
    miss = float((every[1] - target[1]).norm(dim=-1).mean())
    assert miss > 0.5 * float(planted.offset.norm()), miss


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_own_image_control_function_passes_on_a_real_wiring_and_fails_on_a_wrong_one(tiny_bundle, family, monkeypatch):
    from vlsafe.methods.cmrm import controls

    bundle = tiny_bundle(family)
    results = controls.own_image_control(bundle, QUERIES, _images())
    assert [r.layer for r in results] == [0, bundle.num_layers // 2, bundle.num_layers - 1]
    assert all(r.ok and r.image_shift > 1e-3 and r.residual <= 1e-4 * max(1.0, r.scale) for r in results)
    assert results[0].as_dict()["layer"] == 0

    class HalfWay(SampleLevelCMRM):  # a wiring that moves only half of the way: the control must catch it
        def __init__(self, bundle, alpha, **kw):
            super().__init__(bundle, alpha / 2, **kw)

    monkeypatch.setattr(controls, "SampleLevelCMRM", HalfWay)
    assert not any(r.ok for r in controls.own_image_control(bundle, QUERIES, _images()))


def test_own_image_control_refuses_bad_inputs(tiny_bundle):
    from vlsafe.core.errors import InputError
    from vlsafe.methods.cmrm import own_image_control

    bundle = tiny_bundle("llava")
    with pytest.raises(InputError, match="one image per query"):
        own_image_control(bundle, QUERIES, _images()[:2])
    with pytest.raises(InputError, match=r"layers \[99\]"):
        own_image_control(bundle, QUERIES, _images(), layers=[0, 99])
