"""Oracle tests of capture and steering on tiny models of every family."""

from __future__ import annotations

import pytest
import torch

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector, capture, record_hidden_states
from vlsafe.models import build_inputs
from vlsafe.models.tiny import VLM_FAMILIES

QUERIES = ["What is in this picture?", "Describe the scene in a few more words than the first query."]
ALL_FAMILIES = [*VLM_FAMILIES, "causal_lm"]


def _batch(bundle, variant=None):
    variant = variant or ("noise" if bundle.is_vlm else "text")
    return build_inputs(bundle, QUERIES, variant=variant)


def _hooks(bundle) -> int:
    """Hooks vlsafe left behind (transformers' own output-capturing hooks are permanent and not counted)."""

    def ours(hooks) -> int:
        return sum("capturing" not in getattr(h, "__name__", "") for h in hooks.values())

    return ours(bundle.model._forward_pre_hooks) + sum(ours(layer._forward_hooks) for layer in bundle.layers)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_capture_matches_output_hidden_states(tiny_bundle, family):
    bundle = tiny_bundle(family)
    batch = _batch(bundle)
    real = batch.masks.attention.bool()
    with torch.no_grad():
        ref = bundle.model(**batch.inputs, output_hidden_states=True)
    hs_ref = ref.hidden_states if ref.hidden_states is not None else ref.language_model_outputs.hidden_states
    for positions in ("all", "last", "text_mean"):
        with record_hidden_states(bundle, positions=positions) as rec, torch.no_grad():
            rec.set_batch(batch)
            bundle.model(**batch.inputs)
        got = rec.result()
        assert got.layers == list(range(bundle.num_layers))
        for layer in range(bundle.num_layers - 1):  # the last entry of hidden_states is after the final norm
            expect = hs_ref[layer + 1].float()
            if positions == "all":
                assert torch.allclose(got[layer][real], expect[real], atol=1e-5)
            elif positions == "last":
                assert torch.allclose(got[layer], expect[:, -1], atol=1e-5)
            else:
                mask = batch.masks.text.float().unsqueeze(-1)
                mean = (expect * mask).sum(1) / mask.sum(1)
                assert torch.allclose(got[layer], mean, atol=1e-5)


def test_capture_running_mean_equals_mean_of_rows(tiny_bundle):
    bundle = tiny_bundle("llava")
    batches = [_batch(bundle), _batch(bundle, "blank")]
    rows = capture(bundle, batches, layers=[0, 1], positions="last", progress=False)
    mean = capture(bundle, batches, layers=[0, 1], positions="last", reduce="mean", progress=False)
    assert rows[0].shape == (4, bundle.hidden_size) and mean[0].shape == (bundle.hidden_size,)
    assert torch.allclose(mean[1], rows[1].mean(0), atol=1e-5) and mean.count == 4


def test_capture_bad_arguments(tiny_bundle):
    bundle = tiny_bundle("llava")
    with pytest.raises(ConfigError, match="out of range"):
        with record_hidden_states(bundle, layers=[bundle.num_layers]):
            pass
    with pytest.raises(ConfigError, match="positions"):
        with record_hidden_states(bundle, positions="middle"):
            pass
    assert _hooks(bundle) == 0


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_steering_oracle(tiny_bundle, family):
    bundle = tiny_bundle(family)
    batch = _batch(bundle)
    real = batch.masks.attention.bool()
    layer = bundle.num_layers - 1
    torch.manual_seed(1)
    v = torch.randn(bundle.hidden_size)
    alpha = 0.7
    with record_hidden_states(bundle, positions="all") as rec, torch.no_grad():
        bundle.model(**batch.inputs)
    plain = rec.result()
    with SteeringVector({layer: v}).apply(bundle, alpha=alpha):
        with record_hidden_states(bundle, positions="all") as rec, torch.no_grad():
            bundle.model(**batch.inputs)
    steered = rec.result()
    for earlier in range(layer):
        assert torch.equal(steered[earlier], plain[earlier])
    diff = steered[layer] - plain[layer]
    assert torch.allclose(diff[real], (alpha * v).expand_as(diff[real]), atol=1e-5)
    assert torch.count_nonzero(diff[~real]) == 0  # pad positions untouched
    assert _hooks(bundle) == 0


def test_steering_visible_in_output_hidden_states(tiny_bundle):
    bundle = tiny_bundle("llava")
    batch = _batch(bundle)
    v = torch.ones(bundle.hidden_size)
    with torch.no_grad():
        plain = bundle.model(**batch.inputs, output_hidden_states=True).hidden_states[1]
        with SteeringVector({0: v}).apply(bundle, alpha=2.0):
            steered = bundle.model(**batch.inputs, output_hidden_states=True).hidden_states[1]
    real = batch.masks.attention.bool()
    assert torch.allclose((steered - plain)[real], torch.full_like(plain[real], 2.0), atol=1e-5)


def _greedy(bundle, batch, n=4, **kw):
    with torch.no_grad():
        out = bundle.model.generate(**batch.inputs, max_new_tokens=n, do_sample=False, **kw)
    return out[:, batch.input_ids.shape[1] :]


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "causal_lm"])
def test_alpha_zero_is_token_identical(tiny_bundle, family):
    bundle = tiny_bundle(family)
    batch = _batch(bundle)
    v = SteeringVector({k: torch.randn(bundle.hidden_size) for k in range(bundle.num_layers)})
    plain = _greedy(bundle, batch)
    with v.apply(bundle, alpha=0.0):
        same = _greedy(bundle, batch)
    assert torch.equal(plain, same)


def test_kv_cache_decode_steps_are_steered(tiny_bundle):
    bundle = tiny_bundle("llava")
    batch = _batch(bundle)
    torch.manual_seed(3)
    v = SteeringVector({0: 5 * torch.randn(bundle.hidden_size)})
    with v.apply(bundle, alpha=1.0), torch.no_grad():
        cached = bundle.model.generate(
            **batch.inputs,
            max_new_tokens=4,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        uncached = bundle.model.generate(
            **batch.inputs,
            max_new_tokens=4,
            do_sample=False,
            use_cache=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    with v.apply(bundle, alpha=1.0, prefill_only=True), torch.no_grad():
        prefill_only = bundle.model.generate(
            **batch.inputs,
            max_new_tokens=4,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    assert torch.allclose(prefill_only.scores[0], cached.scores[0], atol=1e-5)
    assert not torch.allclose(prefill_only.scores[1], cached.scores[1], atol=1e-3)


def test_left_padded_batch_equals_rows_alone(tiny_bundle):
    bundle = tiny_bundle("llava")
    torch.manual_seed(2)
    v = SteeringVector({0: torch.randn(bundle.hidden_size), 1: torch.randn(bundle.hidden_size)})
    batch = _batch(bundle, "blank")  # noise images are seeded per row, so a row alone would differ
    assert not batch.masks.attention.bool().all(), "the queries must give a padded batch"
    with v.apply(bundle, alpha=0.8), torch.no_grad():
        together = bundle.model(**batch.inputs).logits[:, -1]
        for row, query in enumerate(QUERIES):
            alone = build_inputs(bundle, [query], variant="blank")
            logits = bundle.model(**alone.inputs).logits[:, -1]
            assert torch.allclose(together[row], logits[0], atol=1e-4)


def test_last_position_and_mask_positions(tiny_bundle):
    bundle = tiny_bundle("llava")
    batch = _batch(bundle)
    v = torch.randn(bundle.hidden_size)
    with record_hidden_states(bundle, layers=[0], positions="all") as rec, torch.no_grad():
        bundle.model(**batch.inputs)
    plain = rec.result()[0]
    for positions, mask in (("last", batch.masks.last), (batch.masks.image, batch.masks.image)):
        with SteeringVector({0: v}).apply(bundle, positions=positions):
            with record_hidden_states(bundle, layers=[0], positions="all") as rec, torch.no_grad():
                bundle.model(**batch.inputs)
        diff = rec.result()[0] - plain
        mask = mask.bool()
        assert torch.allclose(diff[mask], v.expand_as(diff[mask]), atol=1e-5)
        assert torch.count_nonzero(diff[~mask]) == 0


def test_per_row_vectors(tiny_bundle):
    bundle = tiny_bundle("llava")
    batch = _batch(bundle)
    rows = torch.randn(2, bundle.hidden_size)
    with record_hidden_states(bundle, layers=[0], positions="last") as rec, torch.no_grad():
        bundle.model(**batch.inputs)
    plain = rec.result()[0]
    with SteeringVector({0: rows}).apply(bundle, alpha=1.0):
        with record_hidden_states(bundle, layers=[0], positions="last") as rec, torch.no_grad():
            bundle.model(**batch.inputs)
    assert torch.allclose(rec.result()[0] - plain, rows, atol=1e-5)
    with pytest.raises(InputError, match="per-row"):
        with SteeringVector({0: torch.randn(3, bundle.hidden_size)}).apply(bundle), torch.no_grad():
            bundle.model(**batch.inputs)


def test_hooks_removed_when_body_raises(tiny_bundle):
    bundle = tiny_bundle("llava")
    before = _hooks(bundle)
    v = SteeringVector({0: torch.zeros(bundle.hidden_size)})
    with pytest.raises(RuntimeError, match="boom"):
        with v.apply(bundle):
            assert _hooks(bundle) > before
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with record_hidden_states(bundle):
            raise RuntimeError("boom")
    assert _hooks(bundle) == before


def test_steering_errors(tiny_bundle):
    bundle = tiny_bundle("llava")
    h = bundle.hidden_size
    with pytest.raises(InputError, match="hidden size"):
        with SteeringVector({0: torch.zeros(h + 1)}).apply(bundle):
            pass
    with pytest.raises(ConfigError, match="out of range"):
        with SteeringVector({bundle.num_layers + 3: torch.zeros(h)}).apply(bundle):
            pass
    with pytest.raises(InputError, match="NaN"):
        with SteeringVector({0: torch.full((h,), float("nan"))}).apply(bundle):
            pass
    with pytest.raises(ConfigError, match="operator"):
        with SteeringVector({0: torch.zeros(h)}).apply(bundle, operator="multiply"):
            pass
    with pytest.raises(ConfigError, match="hidden_norms"):
        with SteeringVector({0: torch.zeros(h)}).apply(bundle, norm_scale=True):
            pass
    assert _hooks(bundle) == 0


def test_prefill_only_leaves_decode_steps_of_an_unpadded_batch_alone(tiny_bundle):
    """``generate`` passes no attention mask for one row without padding: decode steps are told from the
    prefill by the KV cache's length, not by the mask."""
    bundle = tiny_bundle("causal_lm")
    batch = build_inputs(bundle, QUERIES[:1], variant="text")
    inputs = {k: v for k, v in batch.inputs.items() if k != "attention_mask"}
    torch.manual_seed(3)
    v = SteeringVector({0: 5 * torch.randn(bundle.hidden_size)})

    def scores(**apply: object) -> list[torch.Tensor]:
        with v.apply(bundle, **apply), torch.no_grad():  # type: ignore[arg-type]
            out = bundle.model.generate(**inputs, max_new_tokens=3, do_sample=False, output_scores=True,
                                        return_dict_in_generate=True)  # fmt: skip
        return list(out.scores)

    every, prefill = scores(alpha=1.0), scores(alpha=1.0, prefill_only=True)
    assert torch.allclose(prefill[0], every[0], atol=1e-5)
    assert not torch.allclose(prefill[1], every[1], atol=1e-3)
