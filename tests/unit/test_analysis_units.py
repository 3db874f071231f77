"""Unit tests of vlsafe.analysis that need no model: statistics, probes, PCA, figures, weight diffs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vlsafe.analysis import (
    ShiftAccumulator,
    ShiftResult,
    directions_from_states,
    fit_probe,
    heatmap,
    pca_2d,
    pca_scatter,
    probe_predict,
    redraw,
    run_weights,
    split_name,
    unit_directions,
    weight_diff,
)
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.report import png_bytes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _acc(layers: list[int], variants: list[str], hidden: int, direction=None) -> ShiftAccumulator:
    res = ShiftResult(layers=layers, variants=variants, reference=variants[0], positions=["last"])
    return ShiftAccumulator(
        res, hidden, unit_directions(direction), scatter_layers=[layers[-1]], max_points=3
    )


def test_shift_identical_states_is_zero_and_known_offset_is_exact() -> None:
    torch.manual_seed(0)
    acc = _acc([0, 1], ["text", "same", "moved"], 4, direction={0: torch.tensor([0.0, 0, 0, 2.0])})
    offset = torch.tensor([0.0, 0.0, 3.0, 4.0])  # norm 5, projection on e4 = 4
    for _ in range(3):  # three batches of two rows
        ref = {layer: torch.randn(2, 4) for layer in (0, 1)}
        states = {
            "text": {"last": ref},
            "same": {"last": {k: v.clone() for k, v in ref.items()}},
            "moved": {"last": {k: v + offset for k, v in ref.items()}},
        }
        acc.update(states)
    res = acc.finish()
    assert res.count == 6
    assert torch.allclose(res.mean("cos", "last", "same"), torch.ones(2, dtype=torch.float64))
    assert torch.equal(res.mean("l2", "last", "same"), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(res.mean("l2", "last", "moved"), torch.full((2,), 5.0, dtype=torch.float64))
    assert torch.allclose(res.centroid_distance("last", "moved"), torch.full((2,), 5.0, dtype=torch.float64))
    assert res.direction_layers == [0]
    shift_along = res.mean("proj", "last", "moved")[0] - res.mean("proj", "last", "text")[0]
    assert float(shift_along) == pytest.approx(4.0)
    lo, hi = res.interval("l2", "last", "moved")
    assert torch.allclose(lo, hi)  # every row moved by exactly 5: zero variance
    assert res.scatter["text.1"].shape == (3, 4)  # bounded sample
    assert res.rows("last")[1]["moved rel L2"] > 0


def test_unit_directions_rejects_zero_vector() -> None:
    with pytest.raises(InputError, match="norm 0"):
        unit_directions({3: torch.zeros(4)})


def test_separable_set_gives_probe_accuracy_one() -> None:
    gen = torch.Generator().manual_seed(0)
    hidden = 16
    axis = torch.zeros(hidden)
    axis[5] = 1.0
    harmful = {layer: torch.randn(40, hidden, generator=gen) * 0.3 + 2 * axis for layer in (0, 1)}
    harmless = {layer: torch.randn(40, hidden, generator=gen) * 0.3 - 2 * axis for layer in (0, 1)}
    res = directions_from_states(harmful, harmless, test_fraction=0.25, seed=0, probe_steps=100)
    assert res.probe_accuracy == {0: 1.0, 1: 1.0}
    assert res.mean_diff_accuracy == {0: 1.0, 1: 1.0}
    unit = res.directions[0] / res.directions[0].norm()
    assert float(unit[5]) > 0.95  # the direction is the separating axis
    assert res.counts == {"harmful_train": 30, "harmful_test": 10, "harmless_train": 30, "harmless_test": 10}
    assert res.harmful_projection[0] > 1.5 > -1.5 > res.harmless_projection[0]
    sv = res.steering_vector()
    assert sv.layers == [0, 1]


def test_random_labels_give_chance_probe_accuracy() -> None:
    gen = torch.Generator().manual_seed(1)
    same = {0: torch.randn(60, 8, generator=gen)}
    other = {0: torch.randn(60, 8, generator=gen)}
    res = directions_from_states(same, other, seed=0, probe_steps=100)
    assert res.probe_accuracy[0] < 0.85


def test_fit_probe_is_seeded_and_predicts() -> None:
    x = torch.tensor([[0.0, 1.0], [0.1, 1.2], [2.0, -1.0], [2.1, -1.1]])
    y = torch.tensor([0, 0, 1, 1])
    p1, p2 = fit_probe(x, y, steps=50, seed=3), fit_probe(x, y, steps=50, seed=3)
    assert torch.equal(p1[0], p2[0])
    assert probe_predict(p1, x).tolist() == [0, 0, 1, 1]


def test_split_needs_two_per_class() -> None:
    with pytest.raises(InputError, match="at least 2"):
        directions_from_states({0: torch.randn(1, 4)}, {0: torch.randn(5, 4)})
    with pytest.raises(ConfigError, match="test_fraction"):
        directions_from_states({0: torch.randn(4, 4)}, {0: torch.randn(5, 4)}, test_fraction=1.5)


def test_pca_2d_recovers_the_dominant_axis() -> None:
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(50, generator=gen)
    points = torch.zeros(50, 3)
    points[:, 1] = 10 * t
    points[:, 2] = 0.1 * torch.randn(50, generator=gen)
    coords, ratio = pca_2d(points)
    assert coords.shape == (50, 2)
    assert float(ratio[0]) > 0.99
    assert torch.allclose(coords[:, 0].abs(), (10 * t - 10 * t.mean()).double().abs(), atol=1e-3)


def test_figures_are_non_empty_png() -> None:
    fig = pca_scatter({"text": torch.randn(10, 6), "image": torch.randn(10, 6) + 3})
    data = png_bytes(fig)
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    hm = png_bytes(heatmap(torch.rand(3, 5), ["q", "k", "v"], [str(i) for i in range(5)], title="t"))
    assert hm.startswith(PNG_MAGIC) and len(hm) > 5000


def test_split_name() -> None:
    assert split_name("model.layers.3.self_attn.q_proj.weight") == ("model", 3, "self_attn.q_proj")
    assert split_name("model.layers.12.mlp.up_proj.bias") == ("model", 12, "mlp.up_proj.bias")
    assert split_name("lm_head.weight") == ("", None, "lm_head")


# -- weight diff ---------------------------------------------------------------------------
def _checkpoint(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    for s in range(shards):
        part = {n: tensors[n].contiguous() for n in names[s::shards]}
        save_file(part, str(folder / f"model-{s + 1:05d}-of-{shards:05d}.safetensors"))
    return folder


def _llm_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {
        "model.embed_tokens.weight": torch.randn(20, 8, generator=gen),
        "lm_head.weight": torch.randn(20, 8, generator=gen),
    }
    for layer in range(3):
        for mod in ("self_attn.q_proj", "mlp.up_proj"):
            out[f"model.layers.{layer}.{mod}.weight"] = torch.randn(8, 8, generator=gen)
        out[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(8)
    return out


def test_weight_diff_self_is_zero_and_perturbation_equals_its_norm(tmp_path: Path) -> None:
    base = _llm_tensors()
    a = _checkpoint(tmp_path / "a", base, shards=2)
    same = weight_diff(a, a, progress=False)
    assert len(same.rows) == len(base)
    assert all(r["diff"] == 0.0 and r["relative"] == 0.0 for r in same.rows)
    delta = torch.zeros(8, 8)
    delta[2, 3], delta[5, 1] = 3.0, 4.0  # Frobenius norm 5
    changed = dict(base)
    changed["model.layers.1.mlp.up_proj.weight"] = base["model.layers.1.mlp.up_proj.weight"] + delta
    changed["lm_head.weight"] = base["lm_head.weight"].to(torch.bfloat16).float()
    b = _checkpoint(tmp_path / "b", {k: v.contiguous() for k, v in changed.items()}, shards=3)
    res = weight_diff(a, b, progress=False)
    row = next(r for r in res.rows if r["name"] == "model.layers.1.mlp.up_proj.weight")
    assert row["diff"] == pytest.approx(5.0, rel=1e-6)
    assert row["relative"] == pytest.approx(
        5.0 / float(base["model.layers.1.mlp.up_proj.weight"].norm()), rel=1e-6
    )
    assert (row["layer"], row["module"]) == (1, "mlp.up_proj")
    untouched = [r for r in res.rows if r["name"].startswith("model.layers.") and r["name"] != row["name"]]
    assert all(r["diff"] == 0.0 for r in untouched)
    per_layer = res.per_layer()
    assert per_layer[0] == 0.0 and per_layer[2] == 0.0 and per_layer[1] > 0
    modules, layers, mat = res.matrix("model")
    assert layers == [0, 1, 2] and "mlp.up_proj" in modules
    assert float(mat[modules.index("mlp.up_proj"), 1]) == pytest.approx(row["relative"])
    assert res.top(1)[0]["name"] == row["name"]


def test_weight_diff_names_first_mismatching_tensor(tmp_path: Path) -> None:
    base = _llm_tensors()
    a = _checkpoint(tmp_path / "a", base)
    bigger = dict(base)
    bigger["model.layers.0.mlp.up_proj.weight"] = torch.randn(16, 8)
    b = _checkpoint(tmp_path / "b", bigger)
    with pytest.raises(InputError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\[8, 8\].*\[16, 8\]"):
        weight_diff(a, b, progress=False)
    fewer = {k: v for k, v in base.items() if "layers.2" not in k}
    c = _checkpoint(tmp_path / "c", fewer)
    with pytest.raises(
        InputError, match=r"first mismatching tensor 'model\.layers\.2\.input_layernorm\.weight'"
    ):
        weight_diff(a, c, names="exact", progress=False)
    with pytest.raises(ConfigError, match="names="):
        weight_diff(a, a, names="fuzzy", progress=False)


def test_weight_diff_vlm_against_llm_maps_names_and_skips_vision(tmp_path: Path) -> None:
    llm = _llm_tensors()
    vlm = {k.replace("model.", "model.language_model.", 1): v.clone() for k, v in llm.items()}
    vlm["model.language_model.layers.2.mlp.up_proj.weight"] += 1.0
    vlm["model.vision_tower.encoder.layers.0.fc1.weight"] = torch.randn(4, 4)
    vlm["model.multi_modal_projector.linear_1.weight"] = torch.randn(8, 4)
    a = _checkpoint(tmp_path / "llm", llm)
    b = _checkpoint(tmp_path / "vlm", vlm)
    res = weight_diff(a, b, progress=False)
    assert len(res.rows) == len(llm)
    assert res.skipped_b == [
        "model.multi_modal_projector.linear_1.weight",
        "model.vision_tower.encoder.layers.0.fc1.weight",
    ]
    changed = [r for r in res.rows if r["diff"] > 0]
    assert [r["name_b"] for r in changed] == ["model.language_model.layers.2.mlp.up_proj.weight"]
    assert changed[0]["diff"] == pytest.approx(8.0)  # 64 entries of +1
    paths = run_weights(a, b, tmp_path / "out", progress=False)
    assert paths["weights_heatmap_0"].read_bytes().startswith(PNG_MAGIC)
    summary = paths["summary"].read_text()
    assert "| model.layers.2.mlp.up_proj.weight | [8, 8] | 8.000 |" in summary  # the top change, by LLM name
    data = json.loads((tmp_path / "out" / "data.json").read_text())
    assert data["kind"] == "weights" and len(data["rows"]) == len(llm)
    paths["weights_heatmap_0"].unlink()
    again = redraw(tmp_path / "out")
    assert again["weights_heatmap_0"].stat().st_size > 1000
    assert not math.isnan(res.per_layer()[2])


def test_redraw_rejects_non_analysis_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data.json"):
        redraw(tmp_path)
