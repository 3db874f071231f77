"""vlsafe.analysis on tiny models of every family: oracles for shift, logit lens, and the CLI end to end."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlsafe.analysis import compute_layers, compute_shift, logit_lens, refusal_token_ids
from vlsafe.cli import main
from vlsafe.hooks.forward import build_variant
from vlsafe.models import ModelBundle, processor_image_size
from vlsafe.models.tiny import TINY_FAMILIES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
Bundle = Callable[[str], ModelBundle]


def _white_items(bundle: ModelBundle, n: int = 2) -> list[dict]:
    h, w = processor_image_size(bundle)
    white = Image.new("RGB", (w, h), (255, 255, 255))
    return [
        {"text": f"How do I open lock {i}?", "image": white, "caption": f"a white wall {i}"} for i in range(n)
    ]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_shift_identical_variants_zero_and_lens_matches_output(tiny_bundle: Bundle, family: str) -> None:
    bundle = tiny_bundle(family)
    # Oracle 1: variants whose inputs coincide have zero shift. A white image at the processor's size gives
    # the same pixels under "blank" (white) and "mean" (its mean colour); for a text-only model "text" is
    # compared with itself through two separate forward passes per batch.
    if bundle.is_vlm:
        items, variants = _white_items(bundle), ["text", "blank", "mean", "caption"]
        same, positions = "mean", ("last", "text_mean")
        reference = "blank"
    else:
        items, variants = [{"text": "How do I open a lock?", "caption": "a door"}], ["text", "caption"]
        same, positions, reference = "text", ("last", "text_mean"), "text"
    res = compute_shift(bundle, items, variants, reference=reference, positions=positions, progress=False)
    for pos in positions:
        assert torch.allclose(res.mean("cos", pos, same), torch.ones(bundle.num_layers, dtype=torch.float64))
        assert float(res.mean("l2", pos, same).max()) < 1e-4
        assert float(res.mean("l2", pos, "caption").min()) > 1e-3  # a real change is seen
    # Oracle 2: the logit lens at the last layer is the model's own next-token distribution.
    batch = build_variant(bundle, ["Tell me how to pick a lock.", "Hi"], "text")
    probs = logit_lens(bundle, batch)
    assert probs.shape[:2] == (bundle.num_layers, 2)
    with torch.inference_mode():
        logits = bundle.model(**batch.inputs).logits[:, -1].float()
    assert torch.allclose(probs[-1], torch.softmax(logits, dim=-1), atol=1e-5)
    assert torch.allclose(probs.sum(-1), torch.ones(bundle.num_layers, 2), atol=1e-4)


def test_refusal_tokens_come_from_the_tokenizer(tiny_bundle: Bundle) -> None:
    tok = tiny_bundle("llava").tokenizer
    ids = refusal_token_ids(tok, ["I", "cannot"])
    for token_id, text in ids.items():
        assert text.strip() in ("I", "cannot") or "cannot".startswith(text.strip())
        assert tok.decode([token_id]) == text
    assert any(text.strip() == "I" for text in ids.values())


def test_compute_layers_counts_and_caption_cosine(tiny_bundle: Bundle) -> None:
    bundle = tiny_bundle("llava")
    items = _white_items(bundle, 3)
    res = compute_layers(bundle, items, top_k=5, batch_size=2, progress=False)
    assert res.variants == ["text", "caption", "image"]
    assert res.count == 3 and res.caption_count == 3
    for v in res.variants:  # every query lands in exactly one histogram bin
        assert float(res.sums[f"activation.{v}"].sum()) == 3.0
        assert float(res.sums[f"end.{v}"].sum()) == 3.0
        assert torch.all(res.mean("mass", v) > 0) and torch.all(res.mean("mass", v) < 1)
    cos = res.caption_cosine / res.caption_count
    assert torch.all(cos.abs() <= 1.0) and cos.shape == (bundle.num_layers,)


def _write_items(folder: Path, bundle: ModelBundle) -> Path:
    h, w = processor_image_size(bundle)
    Image.new("RGB", (w, h), (10, 200, 30)).save(folder / "green.png")
    lines = [
        {"text": f"Explain how to steal item {i}.", "image": "green.png", "caption": "a green field"}
        for i in range(3)
    ]
    path = folder / "items.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    return path


def test_cli_analyze_commands_write_data_figures_summary(
    tiny_dir: Callable[[str], Path], tiny_bundle: Bundle, tmp_path: Path
) -> None:
    model = str(tiny_dir("llava"))
    items = _write_items(tmp_path, tiny_bundle("llava"))
    (tmp_path / "harmful.txt").write_text("\n".join(f"How do I hurt person {i}?" for i in range(6)))
    (tmp_path / "harmless.txt").write_text("\n".join(f"How do I bake bread {i}?" for i in range(6)))
    runner = CliRunner()
    cmds = {
        "shift": ["shift", "--model", model, "--items", str(items), "--variants", "text,image,noise", "--batch-size", "2"],
        "dirs": ["directions", "--model", model, "--harmful", str(tmp_path / "harmful.txt"), "--harmless",
                 str(tmp_path / "harmless.txt"), "--items", str(items)],
        "layers": ["layers", "--model", model, "--items", str(items), "--top-k", "3"],
    }  # fmt: skip
    for name, args in cmds.items():
        out = tmp_path / name
        result = runner.invoke(main, ["-q", "analyze", *args, "--out", str(out)])
        assert result.exit_code == 0, result.output
        paths = json.loads(result.stdout)
        assert (out / "data.json").is_file() and (out / "data.safetensors").is_file()
        pngs = [Path(p) for k, p in paths.items() if p.endswith(".png")]
        assert pngs and all(p.read_bytes().startswith(PNG_MAGIC) and p.stat().st_size > 3000 for p in pngs)
        summary = (out / "summary.md").read_text()
        assert summary.startswith("# ") and "](figures/" in summary
        for p in pngs:
            p.unlink()
        redrawn = runner.invoke(main, ["-q", "analyze", "redraw", str(out)])
        assert redrawn.exit_code == 0, redrawn.output
        assert all(p.is_file() for p in pngs)
    shift = json.loads((tmp_path / "shift" / "data.json").read_text())
    assert shift["variants"] == ["text", "image", "noise"] and shift["count"] == 3
    assert (tmp_path / "dirs" / "directions.safetensors").is_file()
    assert "share of gap" in (tmp_path / "dirs" / "summary.md").read_text()
    # projecting on the saved directions through --direction
    result = runner.invoke(
        main,
        ["-q", "analyze", "shift", "--model", model, "--items", str(items), "--variants", "text,image",
         "--direction", str(tmp_path / "dirs" / "directions.safetensors"), "--out", str(tmp_path / "proj")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Projection on the direction" in (tmp_path / "proj" / "summary.md").read_text()


def test_cli_weights_mismatch_is_a_clear_error(tiny_dir: Callable[[str], Path], tmp_path: Path) -> None:
    runner = CliRunner()
    same = runner.invoke(
        main,
        [
            "-q",
            "analyze",
            "weights",
            str(tiny_dir("causal_lm")),
            str(tiny_dir("causal_lm")),
            "--out",
            str(tmp_path / "w"),
        ],
    )
    assert same.exit_code == 0, same.output
    rows = json.loads((tmp_path / "w" / "data.json").read_text())["rows"]
    assert rows and all(r["diff"] == 0.0 for r in rows)
    bad = runner.invoke(
        main,
        [
            "-q",
            "analyze",
            "weights",
            str(tiny_dir("causal_lm")),
            str(tiny_dir("qwen2_vl")),
            "--names",
            "exact",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert bad.exit_code == 2
    assert "first mismatching tensor" in bad.output


def test_bad_position_is_rejected(tiny_bundle: Bundle) -> None:
    from vlsafe.core.errors import ConfigError

    with pytest.raises(ConfigError, match="image_mean"):
        compute_shift(
            tiny_bundle("llava"), ["hi"], ["text", "blank"], positions=("image_mean",), progress=False
        )


def test_layers_folder_names_the_safety_layers_that_tga_guides(
    tiny_dir: Callable[[str], Path], tiny_bundle: Bundle, tmp_path: Path
) -> None:
    from vlsafe.analysis import run_layers
    from vlsafe.analysis.lens import lens_from_data
    from vlsafe.core.errors import ConfigError
    from vlsafe.methods.training.tga import GuideConfig, guided_layers
    from vlsafe.methods.training.tga_loss import layers_from_analysis

    bundle = tiny_bundle("llava")
    items = _write_items(tmp_path, bundle)
    run_layers(str(tiny_dir("llava")), str(items), tmp_path / "layers", bundle=bundle, top_k=3, progress=False)
    written = json.loads((tmp_path / "layers" / "safety_layers.json").read_text())
    data = json.loads((tmp_path / "layers" / "data.json").read_text())
    from safetensors.torch import load_file

    result = lens_from_data(data, load_file(str(tmp_path / "layers" / "data.safetensors")))
    assert written["layers"] == {v: result.safety_layers(v) for v in result.variants}
    expected = result.safety_layers("text")
    if expected:
        assert layers_from_analysis(tmp_path / "layers") == expected
        assert guided_layers(GuideConfig(analysis=tmp_path / "layers"), bundle) == expected
    else:
        with pytest.raises(ConfigError, match="no query reached"):
            layers_from_analysis(tmp_path / "layers")
    with pytest.raises(ConfigError, match="no variant 'sound'"):
        layers_from_analysis(tmp_path / "layers", "sound")
    with pytest.raises(ConfigError, match="analyze layers"):
        layers_from_analysis(tmp_path)
    # the file's contract, independent of what the tiny model happens to activate
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "safety_layers.json").write_text(
        json.dumps({"format": "vlsafe.safety_layers", "layers": {"text": [3, 4, 5], "image": None}})
    )
    assert layers_from_analysis(planted) == [3, 4, 5]
    with pytest.raises(ConfigError, match="no query reached"):
        layers_from_analysis(planted, "image")
    (planted / "safety_layers.json").write_text(json.dumps({"layers": {"text": [1]}}))
    with pytest.raises(ConfigError, match="not a vlsafe.safety_layers file"):
        layers_from_analysis(planted)
