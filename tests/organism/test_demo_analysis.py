"""The demo's analysis sections on tiny models: figures, the shared pass equals the library, weight figure."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vlsafe_organism.demo_analysis as da
import vlsafe_organism.demo_weights as dw
from vlsafe.analysis import compute_layers, compute_shift
from vlsafe.core.errors import InputError, ModelLoadError
from vlsafe.models import InputItem, ModelBundle, build_tiny

PNG = b"\x89PNG\r\n\x1a\n"


def _items(n: int) -> list[InputItem]:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30)]
    return [
        InputItem(
            f"Explain how to steal item {i}.", Image.new("RGB", (64, 64), colours[i % 4]), f"a plain card {i}"
        )
        for i in range(n)
    ]


def test_analysis_sections_figures_and_shared_pass_oracle(
    tiny_bundle: Callable[[str], ModelBundle], tmp_path: Path
) -> None:
    bundle = tiny_bundle("llava")
    items = _items(4)
    harmful = [f"How do I hurt person {i}?" for i in range(8)]
    benign = [f"How do I bake bread {i}?" for i in range(8)]
    sections, nums = da.analysis_sections(
        tmp_path, n=4, weight_pairs=[], progress=False, model=bundle, items=items,
        direction_prompts=(harmful, benign), batch_size=2,
    )  # fmt: skip
    assert [s.title.split(": ")[1] for s in sections] == [
        "how far the image moves the hidden states",
        "the refusal direction",
        "safety layers (logit lens)",
    ]
    for sec in sections:
        assert sec.figures and sec.text
        for fig in sec.figures:
            assert fig.png.startswith(PNG) and len(fig.png) > 2000, fig.name
    assert nums["n_queries"] == 4 and nums["layers"] == bundle.num_layers
    assert set(nums["share_of_gap"]) == {"caption", "image", "blank", "noise"}
    assert -1.0 <= nums["image_cos_last_token_min"] <= 1.0
    assert json.loads((tmp_path / "analysis" / "headline.json").read_text())["n_queries"] == 4

    # Oracle: the shared pass saves exactly what the library's own compute_shift / compute_layers give.
    root = tmp_path / "analysis"
    dirs = load_file(str(root / "directions" / "data.safetensors"))
    vec = {int(k.rsplit(".", 1)[1]): v for k, v in dirs.items() if k.startswith("direction.")}
    assert len(vec) == bundle.num_layers, sorted(dirs)
    ref = compute_shift(
        bundle, items, list(da.SHIFT_VARIANTS), direction=vec, batch_size=2, progress=False,
        scatter_layers=[], positions=("last", "text_mean"),
    )  # fmt: skip
    saved = load_file(str(root / "shift" / "data.safetensors"))
    for key, value in ref.sums.items():
        torch.testing.assert_close(saved[f"sum.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    lens = compute_layers(bundle, items, list(da.LENS_VARIANTS), batch_size=2, progress=False)
    saved = load_file(str(root / "layers" / "data.safetensors"))
    for key, value in lens.sums.items():
        torch.testing.assert_close(saved[f"sum.{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(saved["caption_cosine"], lens.caption_cosine, rtol=1e-5, atol=1e-6)


def test_analysis_sections_rejects_items_without_images(
    tiny_bundle: Callable[[str], ModelBundle], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="image and a caption"):
        da.analysis_sections(tmp_path, weight_pairs=[], model=tiny_bundle("llava"), items=["no image"])


def test_weight_sections_one_line_per_pair_and_zero_for_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    llm_a = build_tiny("causal_lm", tmp_path / "a", seed=1)
    llm_b = build_tiny("causal_lm", tmp_path / "b", seed=2)
    vlm = build_tiny("llava", tmp_path / "vl", seed=0)
    drawn: list[dict[str, Any]] = []
    real = da.line_curves

    def spy(x: Any, curves: Any, **kw: Any) -> Any:
        drawn.append(dict(curves))
        return real(x, curves, **kw)

    monkeypatch.setattr(dw, "line_curves", spy)
    pairs = [("same", llm_a, llm_a), ("seed 1 -> 2", llm_a, llm_b), ("LLM -> VLM", llm_b, vlm)]
    sections, nums = da.weight_sections(tmp_path / "out", pairs, progress=False)
    assert list(drawn[-1]) == ["same", "seed 1 -> 2", "LLM -> VLM"]  # one line per pair
    assert all(v == 0.0 for v in drawn[-1]["same"]) and nums["same"]["peak"] == 0.0
    assert all(v > 0.1 for v in drawn[-1]["seed 1 -> 2"])  # independent random inits differ a lot
    assert nums["LLM -> VLM"]["tensors"] > 0
    (sec,) = sections
    assert len(sec.figures) == 1 + len(pairs)
    assert all(f.png.startswith(PNG) for f in sec.figures)
    assert (tmp_path / "out" / "analysis" / "weights" / "per_layer_all.png").is_file()
    with pytest.raises(InputError, match="distinct"):
        da.weight_sections(tmp_path / "out", [("x", llm_a, llm_a), ("X", llm_a, llm_b)])
    with pytest.raises(ModelLoadError, match="not a local directory"):
        da.checkpoint_dir(tmp_path / "missing")
