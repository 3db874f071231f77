"""Memory behaviour of the shift analysis: constant state in N, and no unused work per batch."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlsafe.analysis import compute_shift
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.models import ModelBundle


def _count_calls(
    module: torch.nn.Module, counter: dict[str, int], key: str
) -> torch.utils.hooks.RemovableHandle:
    def hook(mod: torch.nn.Module, args: object, output: object) -> None:
        counter[key] = counter.get(key, 0) + 1

    return module.register_forward_hook(hook)


def test_forward_without_output_stops_after_last_chosen_layer(
    tiny_bundle: Callable[[str], ModelBundle],
) -> None:
    bundle = tiny_bundle("causal_lm")
    assert bundle.num_layers >= 2
    batch = build_variant(bundle, ["how are you", "a longer query here"], "text")
    full, output = forward_states(bundle, batch, [0], ["last", "text_mean"])
    assert output is not None and output.past_key_values is None  # no KV cache for an analysis prefill
    hooks_before = [len(layer._forward_hooks) for layer in bundle.layers]
    calls: dict[str, int] = {}
    handles = [
        _count_calls(bundle.layers[1], calls, "layer1"),
        _count_calls(bundle.model.get_output_embeddings(), calls, "head"),
    ]
    try:
        cut, none = forward_states(bundle, batch, [0], ["last", "text_mean"], need_output=False)
    finally:
        for h in handles:
            h.remove()
    assert none is None
    assert calls == {}  # neither the later layer nor the LM head ran
    assert [len(layer._forward_hooks) for layer in bundle.layers] == hooks_before  # stop hook removed
    for pos in ("last", "text_mean"):
        assert torch.equal(cut[pos][0], full[pos][0])


def test_shift_state_is_constant_in_n_and_repeats_keep_the_means(
    tiny_bundle: Callable[[str], ModelBundle],
) -> None:
    bundle = tiny_bundle("causal_lm")
    base = [{"text": f"query number {i}", "caption": f"a caption {i}"} for i in range(4)]

    def run(items: list[dict[str, str]]):  # noqa: ANN202
        return compute_shift(
            bundle, items, ["text", "caption"], batch_size=2, max_scatter_points=3, progress=False
        )

    small, large = run(base), run(base * 3)
    assert (small.count, large.count) == (4, 12)
    shapes = {k: tuple(v.shape) for k, v in small.sums.items()}
    assert shapes == {k: tuple(v.shape) for k, v in large.sums.items()}  # same running sums, any N
    assert {k: tuple(v.shape) for k, v in large.scatter.items()} == {
        k: (3, bundle.hidden_size) for k in small.scatter
    }  # PCA sample capped at max_scatter_points
    for key in ("cos.last.caption", "rel.text_mean.caption", "norm.last.text"):
        stat, pos, variant = key.split(".")
        assert torch.allclose(large.mean(stat, pos, variant), small.mean(stat, pos, variant), atol=1e-6)
    assert not torch.allclose(
        small.mean("cos", "last", "caption"), torch.ones(len(small.layers), dtype=torch.float64)
    )
