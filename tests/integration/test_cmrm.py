"""CMRM on tiny models of every VLM family: sign, alpha = 0, sample vs dataset level, batching, I/O."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, record_hidden_states
from vlsafe.methods.cmrm import (
    CMRMIntervention,
    SampleLevelCMRM,
    calibrate,
    check_compatible,
    cmrm_steer,
    variant_differences,
)
from vlsafe.models import build_inputs
from vlsafe.models.inputs import InputItem
from vlsafe.models.tiny import VLM_FAMILIES

QUERIES = ["What is shown here?", "Describe the colours in this picture, please.", "Is it safe to eat?"]
COLOURS = [(200, 30, 30), (20, 180, 90), (10, 10, 240)]
GEN = {"max_new_tokens": 3, "do_sample": False}


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), c) for c in COLOURS]


def _anchors() -> list[dict]:
    return [{"text": q, "image": im} for q, im in zip(QUERIES, _images(), strict=True)]


def _last_states(bundle, batch, layers, steer=None) -> dict[int, torch.Tensor]:
    """Last-prompt-token states of ``layers``; ``steer`` is a context manager entered around the pass."""
    with record_hidden_states(bundle, layers, "last") as rec, torch.inference_mode():
        rec.set_batch(batch)
        if steer is None:
            bundle.model(**batch.inputs)
        else:
            with steer:
                bundle.model(**batch.inputs)
        return rec.result().states


def _generate(bundle, batch) -> torch.Tensor:
    with torch.inference_mode():
        return bundle.model.generate(**batch.inputs, **GEN)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_cmrm_on_family(tiny_bundle, family):
    bundle = tiny_bundle(family)
    layers = list(range(bundle.num_layers))
    vec = calibrate(bundle, _anchors(), corrupt="image", progress=False)
    assert vec.layers == layers and vec.meta["n_anchors"] == 3 and vec.meta["num_layers"] == bundle.num_layers
    assert all(n > 0 for n in vec.meta["hidden_norms"].values())

    image = build_inputs(bundle, QUERIES, variant="image", images=_images())
    text = build_inputs(bundle, QUERIES, variant="text")
    target = _last_states(bundle, text, layers)

    # alpha = 0 is token-identical to no steering (dataset and sample level, all layers).
    plain = _generate(bundle, image)
    with cmrm_steer(bundle, vec, 0.0, layers="all"):
        assert torch.equal(_generate(bundle, image), plain)
    with SampleLevelCMRM(bundle, 0.0, layers="all") as cm:
        assert torch.equal(
            cm.generate(QUERIES, images=_images(), **GEN), plain[:, image.input_ids.shape[1] :]
        )

    # Sign, measured at every layer: steering layer l alone with the anchors' mean difference reduces the
    # mean squared distance to the text-only state at l for 0 < alpha < 2 and increases it for alpha < 0.
    for layer in layers:

        def dist(alpha: float, layer: int = layer) -> float:
            steer = cmrm_steer(bundle, vec, alpha, layers=[layer], delta=False)
            got = _last_states(bundle, image, [layer], steer)[layer]
            return float(((got - target[layer]) ** 2).sum(-1).mean())

        d0, d_half, d1, d_neg = dist(0.0), dist(0.5), dist(1.0), dist(-0.5)
        assert d1 < d_half < d0 < d_neg, (layer, d0, d_half, d1, d_neg)

        # Sample level with the input's own image: alpha = 1 reproduces the text-only state exactly.
        with SampleLevelCMRM(bundle, 1.0, layers=[layer], corrupt="image") as cm:
            cm.prepare(QUERIES, _images())
            got = _last_states(bundle, image, [layer], None)[layer]
        scale = float(target[layer].abs().max())
        assert torch.allclose(got, target[layer], atol=1e-4 * max(1.0, scale)), layer

    # All layers at once with per-layer deltas: closer to text-only at every steered layer (measured).
    base = _last_states(bundle, image, layers)
    steered = _last_states(bundle, image, layers, cmrm_steer(bundle, vec, 1.0, layers="all", delta=True))
    for layer in layers:
        before = ((base[layer] - target[layer]) ** 2).sum(-1).mean()
        after = ((steered[layer] - target[layer]) ** 2).sum(-1).mean()
        assert after < before, (layer, float(before), float(after))


def test_one_anchor_dataset_equals_sample_level(tiny_bundle):
    bundle = tiny_bundle("llava")
    anchor = _anchors()[1]
    for reduce in ("mean", "pca"):
        ds = calibrate(bundle, [anchor], reduce=reduce, progress=False)
        with SampleLevelCMRM(bundle, layers="all") as cm:
            per_input = cm.compute([anchor["text"]], [anchor["image"]])
        for layer in ds.layers:
            assert per_input.vectors[layer].shape == (1, bundle.hidden_size)
            assert torch.allclose(ds.vectors[layer], per_input.vectors[layer][0], atol=1e-6)
    rows = calibrate(bundle, _anchors(), level="sample", progress=False)
    mean = calibrate(bundle, _anchors(), progress=False)
    assert rows.vectors[0].shape == (3, bundle.hidden_size)
    assert torch.allclose(rows.vectors[0].mean(0), mean.vectors[0], atol=1e-6)


def test_pca_sign_agrees_with_mean(tiny_bundle):
    bundle = tiny_bundle("llava")
    vec = calibrate(bundle, _anchors(), reduce="pca", corrupt="noise", progress=False)
    mean = calibrate(bundle, _anchors(), reduce="mean", corrupt="noise", progress=False)
    for layer in vec.layers:
        assert float(vec.vectors[layer] @ mean.vectors[layer]) > 0
    assert set(vec.meta["pca_explained_variance"]) == set(vec.layers)


def test_batched_sample_level_equals_per_row(tiny_bundle):
    bundle = tiny_bundle("qwen2_vl")  # dynamic resolution: rows differ in length, so padding matters
    items = [InputItem(q, im) for q, im in zip(QUERIES, _images(), strict=True)]
    items[2] = InputItem(QUERIES[2], Image.new("RGB", (96, 32), (90, 90, 9)))
    for corrupt in ("image", "noise", "blank"):
        batched, _ = variant_differences(bundle, items, corrupt=corrupt)
        for i, item in enumerate(items):
            alone, _ = variant_differences(bundle, [item], corrupt=corrupt)
            for layer in batched:
                assert torch.allclose(batched[layer][i], alone[layer][0], atol=1e-5), (corrupt, i, layer)
    # Steered states of each row equal the row steered alone.
    batch = build_inputs(bundle, items, variant="image")
    with SampleLevelCMRM(bundle, 1.0, layers="all") as cm:
        cm.prepare(items)
        together = _last_states(bundle, batch, [0, 1])
    for i, item in enumerate(items):
        single = build_inputs(bundle, [item], variant="image")
        with SampleLevelCMRM(bundle, 1.0, layers="all") as cm:
            cm.prepare([item])
            alone_states = _last_states(bundle, single, [0, 1])
        for layer in (0, 1):
            assert torch.allclose(together[layer][i], alone_states[layer][0], atol=1e-5)


def test_auto_mode_matches_explicit_and_skips_text_only(tiny_bundle):
    bundle = tiny_bundle("llava")
    with SampleLevelCMRM(bundle, 1.0, layers="all") as cm:
        explicit = cm.generate(QUERIES, images=_images(), **GEN)
    text = build_inputs(bundle, QUERIES, variant="text")
    text_plain = _generate(bundle, text)
    with SampleLevelCMRM(bundle, 1.0, layers="all", auto=True) as cm:
        cm.before_batch(QUERIES, _images())  # what the runner announces before each batch
        batch = build_inputs(bundle, QUERIES, variant="image", images=_images())
        auto = _generate(bundle, batch)[:, batch.input_ids.shape[1] :]
        assert cm.n_computed == 3 and cm.vector is not None
        cm.before_batch(QUERIES, None)  # a text-only batch is announced: not steered
        assert cm.vector is None
        assert torch.equal(_generate(bundle, text), text_plain)
    assert torch.equal(auto, explicit)
    assert not torch.equal(auto, _generate(bundle, batch)[:, batch.input_ids.shape[1] :])
    assert not any(_ours(layer._forward_hooks) for layer in bundle.layers)
    with pytest.raises(ConfigError, match="inside its `with` block"):
        cm.before_batch(QUERIES, _images())


def _ours(hooks) -> bool:
    return any("capturing" not in getattr(h, "__name__", "") for h in hooks.values())


def test_save_load_provenance_and_foreign_vectors(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llava")
    vec = calibrate(bundle, _anchors(), corrupt="blank", positions="text_mean", progress=False)
    loaded = SteeringVector.load(vec.save(tmp_path / "v"))
    for key in ("model", "family", "anchors_hash", "corrupt", "positions", "date", "num_layers", "sign"):
        assert loaded.meta[key] == vec.meta[key], key
    assert loaded.meta["corrupt"] == "blank" and loaded.meta["positions"] == "text_mean"
    assert {int(k) for k in loaded.meta["hidden_norms"]} == set(vec.layers)
    assert all(torch.equal(loaded.vectors[i], vec.vectors[i]) for i in vec.layers)
    with cmrm_steer(bundle, loaded, 1.0, norm_scale=True):  # hidden_norms survive the JSON round trip
        pass

    wide = SteeringVector({0: torch.ones(bundle.hidden_size * 2)}, {"model": "other", "num_layers": 2})
    with pytest.raises(InputError, match="hidden size"):
        check_compatible(wide, bundle)
    deep = SteeringVector({0: torch.ones(bundle.hidden_size)}, {"model": "other", "num_layers": 30})
    with pytest.raises(InputError, match="30 decoder layers"):
        with cmrm_steer(bundle, deep, 1.0, layers=[0]):
            pass
    with pytest.raises(InputError, match="hidden size"):
        CMRMIntervention(bundle, wide)
    with pytest.raises(ConfigError, match="not in the CMRM vector"):
        with cmrm_steer(bundle, vec.subset([0]), 1.0, layers=[1]):
            pass


def test_bad_inputs(tiny_bundle):
    bundle = tiny_bundle("llava")
    with pytest.raises(ConfigError, match="corrupt="):
        calibrate(bundle, _anchors(), corrupt="grey", progress=False)
    with pytest.raises(ConfigError, match="reduce="):
        calibrate(bundle, _anchors(), reduce="median", progress=False)
    with pytest.raises(InputError, match="corrupt='mean'"):
        calibrate(bundle, ["no image here"], corrupt="mean", progress=False)
    with pytest.raises(InputError, match="empty"):
        calibrate(bundle, [], progress=False)
    hidden = bundle.hidden_size
    with SampleLevelCMRM(bundle, 1.0, layers="all", norm_scale=True) as cm:
        with pytest.raises(ConfigError, match="hidden_norms"):
            cm.set_vector(SteeringVector({0: torch.ones(hidden), 1: torch.ones(hidden)}))
        cm.prepare(QUERIES, _images())  # computed vectors carry their norms
        assert set(cm.vector.meta["hidden_norms"]) == {0, 1}
    with pytest.raises(ConfigError, match="must be called inside"):
        SampleLevelCMRM(bundle).generate(QUERIES, images=_images())
    # corrupt="image" without an image falls back to seeded noise, and says so.
    vec = calibrate(bundle, ["no image here"], corrupt="image", progress=False)
    assert vec.meta["n_substituted_noise"] == 1
    lm = tiny_bundle("causal_lm")
    with pytest.raises(InputError, match="vision-language"):
        calibrate(lm, ["hello"], progress=False)
