"""Weight diffs of checkpoints whose vocabularies differ in size; the logit lens's activation layer is searched
from layer 1 on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from vlsafe.analysis import LensResult, redraw, run_weights, weight_diff
from vlsafe.analysis.lens import LENS_STATS, lens_update
from vlsafe.cli import main
from vlsafe.core.errors import ConfigError, InputError

EMBED_A, EMBED_B = "model.embed_tokens.weight", "model.language_model.embed_tokens.weight"
UP = "model.layers.1.mlp.up_proj.weight"


def _save(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def _llm() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {EMBED_A: torch.randn(20, 8, generator=gen), "lm_head.weight": torch.randn(20, 8, generator=gen)}
    for layer in range(2):
        for mod in ("self_attn.q_proj", "mlp.up_proj"):
            out[f"model.layers.{layer}.{mod}.weight"] = torch.randn(8, 8, generator=gen)
    return out


def _vlm(llm: dict[str, torch.Tensor], extra_rows: int = 1) -> dict[str, torch.Tensor]:
    """The LLM as a VLM's language model with an added token row, a known change and a vision tensor."""
    vlm = {k.replace("model.", "model.language_model.", 1): v.clone() for k, v in llm.items()}
    extra = torch.full((extra_rows, 8), 100.0)  # the new token's row: huge, must never be compared
    embed = torch.cat([llm[EMBED_A], extra])
    embed[4, 2] += 3.0  # in the common rows: ||change|| = 3
    vlm[EMBED_B] = embed
    delta = torch.zeros(8, 8)
    delta[2, 3], delta[5, 1] = 3.0, 4.0  # Frobenius norm 5
    vlm[UP.replace("model.", "model.language_model.", 1)] += delta
    vlm["model.multi_modal_projector.linear_1.weight"] = torch.ones(8, 4)
    return vlm


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    llm = _llm()
    return _save(tmp_path / "llm", llm), _save(tmp_path / "vlm", _vlm(llm)), llm


def test_resized_default_error_names_the_tensor_and_the_options(
    pair: tuple[Path, Path, dict[str, torch.Tensor]],
) -> None:
    a, b, _ = pair
    with pytest.raises(
        InputError,
        match=r"first mismatching tensor 'model\.embed_tokens\.weight'.*\[20, 8\].*\[21, 8\].*resized=",
    ):
        weight_diff(a, b, progress=False)
    with pytest.raises(ConfigError, match=r"resized='trim' is not one of error, skip, overlap"):
        weight_diff(a, b, resized="trim", progress=False)


def test_resized_skip_leaves_the_embedding_out_and_lists_it(
    pair: tuple[Path, Path, dict[str, torch.Tensor]],
) -> None:
    a, b, llm = pair
    res = weight_diff(a, b, resized="skip", progress=False)
    assert res.resized == [
        {"name": EMBED_A, "name_b": EMBED_B, "shape_a": [20, 8], "shape_b": [21, 8], "action": "skipped"}
    ]
    assert sorted(r["name"] for r in res.rows) == sorted(set(llm) - {EMBED_A})
    assert res.skipped_b == ["model.multi_modal_projector.linear_1.weight"]
    up = next(r for r in res.rows if r["name"] == UP)
    assert up["diff"] == pytest.approx(5.0, rel=1e-6)
    assert up["relative"] == pytest.approx(5.0 / float(llm[UP].norm()), rel=1e-6)
    assert all(r["diff"] == 0.0 for r in res.rows if r["name"] != UP)
    assert res.meta["resized"] == "skip"


def test_resized_overlap_compares_the_common_leading_rows(
    pair: tuple[Path, Path, dict[str, torch.Tensor]],
) -> None:
    a, b, llm = pair
    res = weight_diff(a, b, resized="overlap", progress=False)
    assert [r["action"] for r in res.resized] == ["overlap"]
    emb = next(r for r in res.rows if r["name"] == EMBED_A)
    assert (emb["shape"], emb["shape_b"], emb["rows_compared"]) == ([20, 8], [21, 8], 20)
    assert emb["diff"] == pytest.approx(3.0, rel=1e-6)  # the extra row (all 100) is not counted
    assert emb["norm_a"] == pytest.approx(float(llm[EMBED_A].norm()), rel=1e-6)
    changed = llm[EMBED_A].clone()
    changed[4, 2] += 3.0
    assert emb["norm_b"] == pytest.approx(float(changed.norm()), rel=1e-6)
    assert emb["relative"] == pytest.approx(3.0 / float(llm[EMBED_A].norm()), rel=1e-6)
    assert len(res.rows) == len(llm)


def test_resize_options_never_hide_other_shape_mismatches(tmp_path: Path) -> None:
    llm = _llm()
    wide = dict(llm)
    wide["model.layers.0.mlp.up_proj.weight"] = torch.zeros(8, 9)  # not a leading-dimension resize
    a, b = _save(tmp_path / "a", llm), _save(tmp_path / "b", wide)
    for mode in ("skip", "overlap"):
        with pytest.raises(
            InputError, match=r"'model\.layers\.0\.mlp\.up_proj\.weight'.*\[8, 8\].*\[8, 9\]"
        ) as err:
            weight_diff(a, b, resized=mode, progress=False)
        assert "resized=" not in str(err.value)  # no resize hint: it is a real architecture mismatch


def test_run_weights_and_cli_list_resized_tensors_in_data_and_summary(
    pair: tuple[Path, Path, dict[str, torch.Tensor]], tmp_path: Path
) -> None:
    a, b, _ = pair
    out = tmp_path / "out"
    paths = run_weights(a, b, out, resized="skip", progress=False)
    summary = paths["summary"].read_text()
    assert (
        "Resized tensors" in summary and f"| {EMBED_A} | {EMBED_B} | [20, 8] | [21, 8] | skipped |" in summary
    )
    data = json.loads((out / "data.json").read_text())
    assert data["resized"][0]["name"] == EMBED_A
    (out / "summary.md").unlink()
    assert "Resized tensors" in redraw(out)["summary"].read_text()
    cli_out = tmp_path / "cli"
    res = CliRunner().invoke(
        main, ["-q", "analyze", "weights", str(a), str(b), "--resized", "overlap", "--out", str(cli_out)]
    )
    assert res.exit_code == 0, res.output
    rows = json.loads((cli_out / "data.json").read_text())["rows"]
    assert next(r for r in rows if r["name"] == EMBED_A)["diff"] == pytest.approx(3.0, rel=1e-6)
    res = CliRunner().invoke(main, ["-q", "analyze", "weights", str(a), str(b), "--out", str(cli_out)])
    assert res.exit_code != 0 and "first mismatching tensor" in res.output, res.output


# -- logit lens: the activation layer --------------------------------------------------------------
def _lens(num_layers: int, top_k: int) -> LensResult:
    res = LensResult(["text"], num_layers, top_k, {0: "Sorry"})
    for stat in LENS_STATS:
        res.sums[f"{stat}.text"] = torch.zeros(num_layers, dtype=torch.float64)
    for which in ("activation", "end"):
        res.sums[f"{which}.text"] = torch.zeros(num_layers + 1, dtype=torch.float64)
    return res


def test_activation_layer_is_searched_from_layer_one() -> None:
    # Token 0 is the refusal token. Query A has it top-1 already at layer 0 (comparing P_0 with zeros would
    # make layer 0 its activation layer; the search starts at layer 1); its first refusal-led change is at layer 2.
    # Query B's first refusal-led change is at layer 1; query C never has one.
    a = [[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.8, 0.1, 0.05, 0.05], [0.9, 0.05, 0.03, 0.02]]
    b = [[0.1, 0.6, 0.2, 0.1], [0.3, 0.4, 0.2, 0.1], [0.6, 0.2, 0.1, 0.1], [0.55, 0.25, 0.1, 0.1]]
    c = [[0.1, 0.6, 0.2, 0.1], [0.05, 0.7, 0.15, 0.1], [0.02, 0.8, 0.1, 0.08], [0.01, 0.9, 0.05, 0.04]]
    probs = torch.tensor([a, b, c], dtype=torch.float32).transpose(0, 1)  # [L=4, B=3, V=4]
    res = _lens(4, top_k=1)
    lens_update(res, "text", probs, torch.tensor([0]))
    res.count = 3
    assert res.sums["activation.text"].tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]  # B at 1, A at 2, C never
    assert res.sums["delta_topk.text"].tolist() == [0.0, 1.0, 2.0, 1.0]  # layer 0 has no change
    assert res.sums["end.text"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]  # end layer unchanged: A 0, B 2
    summary = res.layer_summary("text", "activation")
    assert summary["mode"] == 1 and summary["mean"] == pytest.approx(1.5)
    assert summary["share"] == pytest.approx(2 / 3)
    assert res.sums["top1.text"].tolist() == [1.0, 1.0, 2.0, 2.0]


def test_activation_layer_never_zero_even_when_layer_zero_is_all_refusal() -> None:
    probs = torch.tensor([[[0.97, 0.01, 0.01, 0.01]], [[0.9, 0.05, 0.03, 0.02]]])  # [L=2, B=1, V=4]
    res = _lens(2, top_k=1)
    lens_update(res, "text", probs, torch.tensor([0]))
    assert res.sums["activation.text"].tolist() == [0.0, 0.0, 1.0]  # the refusal mass only falls: never
    res2 = _lens(2, top_k=4)  # with k = V every token is in the top-k: activation at layer 1, not 0
    lens_update(res2, "text", probs, torch.tensor([0]))
    assert res2.sums["activation.text"].tolist() == [0.0, 1.0, 0.0]
