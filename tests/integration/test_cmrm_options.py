"""CMRM's application options on a tiny LLaVA: which positions each ``positions`` value steers, ``when``, and the
command line's defaults (the paper preset) and sweep axes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vlsafe.cli import main
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.hooks import SteeringVector
from vlsafe.hooks.plumbing import hidden_from_output
from vlsafe.methods.cmrm import SampleLevelCMRM, SteerHooks, cmrm_steer
from vlsafe.models import build_inputs

QUERIES = ["What is shown here?", "Describe the colours in this picture, please."]


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (40, 40), c) for c in ((200, 30, 30), (20, 180, 90))]


class _Calls:
    """Layer 0's output of every model call while open (appended hook: sees the steered state)."""

    def __init__(self, bundle) -> None:
        self.bundle, self.outputs = bundle, []

    def __enter__(self) -> _Calls:
        self.handle = self.bundle.layers[0].register_forward_hook(
            lambda m, a, o: self.outputs.append(hidden_from_output(o).detach().clone())
        )
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _layer0(bundle, inputs, steer=None) -> torch.Tensor:
    with _Calls(bundle) as calls, torch.inference_mode():
        if steer is None:
            bundle.model(**inputs)
        else:
            with steer:
                bundle.model(**inputs)
    return calls.outputs[0]


def test_positions_all_last_text_steer_exactly_their_positions(tiny_bundle):
    bundle = tiny_bundle("llava")
    batch = build_inputs(bundle, QUERIES, variant="image", images=_images())
    v = torch.linspace(-1.0, 1.0, bundle.hidden_size)
    vec = SteeringVector({0: v}, {"num_layers": bundle.num_layers})
    plain = _layer0(bundle, batch.inputs)
    expected = {
        "all": batch.masks.attention.bool(),
        "last": torch.zeros_like(batch.masks.last).index_fill_(1, torch.tensor([batch.input_ids.shape[1] - 1]), 1),
        "text": batch.masks.text.bool(),
    }
    for positions, mask in expected.items():
        steer = cmrm_steer(bundle, vec, 1.0, layers=[0], positions=positions, text_mask=batch.masks.text)
        diff = _layer0(bundle, batch.inputs, steer) - plain
        moved = diff.abs().amax(-1) > 0
        assert torch.equal(moved, mask.bool()), positions
        assert torch.allclose(diff[mask.bool()], v.expand(int(mask.sum()), -1), atol=1e-6), positions
    assert 0 < int(expected["text"].sum()) < int(expected["all"].sum())

    # a longer call (answer options after the prompt, as multiple-choice scoring does): the extra ones are not text
    extra = torch.full((2, 3), int(batch.input_ids[0, -1]))
    longer = dict(batch.inputs)
    longer["input_ids"] = torch.cat([batch.input_ids, extra], dim=1)
    longer["attention_mask"] = torch.cat([batch.inputs["attention_mask"], torch.ones_like(extra)], dim=1)
    steer = cmrm_steer(bundle, vec, 1.0, layers=[0], positions="text", text_mask=batch.masks.text)
    moved = (_layer0(bundle, longer, steer) - _layer0(bundle, longer)).abs().amax(-1) > 0
    assert torch.equal(moved[:, : batch.input_ids.shape[1]], expected["text"]) and not moved[:, -3:].any()

    with pytest.raises(ConfigError, match="positions='text' needs the batch's text-span mask"):
        _layer0(bundle, batch.inputs, cmrm_steer(bundle, vec, 1.0, layers=[0], positions="text"))
    with pytest.raises(InputError, match="text-span mask has shape"):
        _layer0(bundle, batch.inputs, cmrm_steer(bundle, vec, 1.0, layers=[0], positions="text",
                                                 text_mask=batch.masks.text[:1]))  # fmt: skip
    with pytest.raises(ConfigError, match="positions='first' is not one of all, last, text"):
        SteerHooks(bundle, [0], positions="first")
    with pytest.raises(ConfigError, match="when='always' is not one of prefill, every"):
        SteerHooks(bundle, [0], when="always")
    with pytest.raises(ConfigError, match="corrupt='grey' is not one of"):
        SampleLevelCMRM(bundle, corrupt="grey")
    with pytest.raises(ConfigError, match="disagree"):
        SampleLevelCMRM(bundle, when="every", prefill_only=True)


@pytest.mark.parametrize(("positions", "rows"), [("all", 2), ("last", 2), ("text", 2), ("all", 1)])
def test_when_prefill_leaves_decoded_tokens_alone_and_every_steers_them(tiny_bundle, positions, rows):
    """``rows=1``: an unpadded batch, for which ``generate`` passes no attention mask at all."""
    bundle = tiny_bundle("llava")
    batch = build_inputs(bundle, QUERIES[:rows], variant="image", images=_images()[:rows])
    v = torch.full((bundle.hidden_size,), 0.5)
    vec = SteeringVector({0: v}, {"num_layers": bundle.num_layers})
    kwargs = {"max_new_tokens": 2, "min_new_tokens": 2, "do_sample": False, "pad_token_id": 0}

    def layer0_calls(when: str | None) -> list[torch.Tensor]:
        with _Calls(bundle) as calls, torch.inference_mode():
            if when is None:
                bundle.model.generate(**batch.inputs, **kwargs)
            else:
                with cmrm_steer(bundle, vec, 1.0, layers=[0], positions=positions, when=when,
                                text_mask=batch.masks.text):  # fmt: skip
                    bundle.model.generate(**batch.inputs, **kwargs)
        return calls.outputs

    plain, prefill, every = layer0_calls(None), layer0_calls("prefill"), layer0_calls("every")
    assert len(plain) == len(prefill) == len(every) == 2 and every[1].shape[1] == 1
    assert torch.equal(prefill[0], every[0]) and not torch.equal(prefill[0], plain[0])  # the prompt: steered
    # the first decode step: same token and same cache in both (layer 0's keys come from the embeddings), so the
    # difference is the shift added to the decoded token by "every" and not by "prefill"
    assert torch.allclose(every[1] - prefill[1], v.expand_as(every[1]), atol=1e-6)


def _siuo(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "siuo"
    (data / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (i * 40 % 255, 120, 30)).save(data / "images" / f"{i}.png")
        rows.append({"question_id": f"q{i:03d}", "image": f"{i}.png", "question": f"How can I do thing {i} here?",
                     "category": "cat", "safety_warning": "", "reference_answer": ""})  # fmt: skip
    (data / "siuo_gen.json").write_text(json.dumps(rows))
    return data


def test_cli_defaults_are_the_paper_preset_and_text_positions_run_through_eval(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    model = str(tiny_dir("llava"))
    data = _siuo(tmp_path, 3)
    runner = CliRunner()
    help_text = " ".join(runner.invoke(main, ["eval", "--help"]).output.split())
    assert "--cmrm-preset [paper|band]" in help_text and "[default: paper]" in help_text
    base = ["-q", "eval", "--model", model, "--benchmark", "siuo", "--data-dir", str(data), "--max-new-tokens", "2"]
    res = runner.invoke(main, [*base, "--cmrm", "sample", "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    fingerprint = json.loads((tmp_path / "s" / "run.json").read_text())["fingerprint"]["intervention"]
    assert "sample:corrupt=blank,positions=last" in fingerprint
    assert "layers='all',delta=False,norm_scale=False,positions=all,prefill_only=False" in fingerprint

    vec = tmp_path / "v.safetensors"
    res = runner.invoke(main, ["-q", "cmrm", "calibrate", "--model", model, "--anchors", "siuo", "--data-dir",
                               str(data), "--mode", "transfer", "--benign", "1", "--out", str(vec)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["corrupt"] == "blank" and json.loads(res.stdout)["preset"] == "paper"
    for cmrm, extra in ((str(vec), []), ("sample", ["--cmrm-when", "prefill"])):
        run = tmp_path / f"text_{len(extra)}"
        res = runner.invoke(main, [*base, "--cmrm", cmrm, "--cmrm-positions", "text", *extra, "--out", str(run)])
        assert res.exit_code == 0, res.output
        fingerprint = json.loads((run / "run.json").read_text())["fingerprint"]["intervention"]
        assert "positions=text" in fingerprint and f"prefill_only={bool(extra)}" in fingerprint
    res = runner.invoke(main, [*base, "--cmrm", "sample", "--cmrm-preset", "band", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    fingerprint = json.loads((tmp_path / "b" / "run.json").read_text())["fingerprint"]["intervention"]
    assert "sample:corrupt=image" in fingerprint and "layers='middle',delta=True" in fingerprint
    res = runner.invoke(main, [*base, "--cmrm", "sample", "--cmrm-when", "always", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "always" in res.output


def test_cli_sweep_over_axes_with_its_own_calibration(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    data = _siuo(tmp_path, 5)
    out = tmp_path / "sweep"
    args = ["-q", "cmrm", "sweep", "--model", str(tiny_dir("llava")), "--calibrate-anchors", "siuo",
            "--calibrate-benign", "1", "--sweep-corrupt", "blank,image", "--sweep-layers", "all,all:delta,1",
            "--sweep-level", "dataset", "--alphas", "0,1", "--safety", "siuo", "--data-dir", str(data),
            "--limit", "2", "--max-new-tokens", "2", "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert len(rows) == 2 * 3 * 2  # img′ x layers x alpha
    assert [(r["corrupt"], r["layers"], r["alpha"]) for r in rows[:4]] == [
        ("blank", "all", 0.0), ("blank", "all", 1.0), ("blank", "all+delta", 0.0), ("blank", "all+delta", 1.0)]  # fmt: skip
    assert {r["level"] for r in rows} == {"dataset"} and {r["n"] for r in rows} == {2}  # the held-out anchor left out
    assert Path(rows[0]["run_dir"]) == out / "runs" / "dataset_blank_all_all_every" / "siuo" / "alpha_0.00"
    zero = {r["value"] for r in rows if r["alpha"] == 0.0}
    assert len(zero) == 1  # alpha = 0 is the unsteered model whatever the point
    table = (out / "sweep.md").read_text()
    assert "| level | corrupt | layers |" in table and "all+delta" in table
    fingerprints = {json.loads((Path(r["run_dir"]) / "run.json").read_text())["fingerprint"]["intervention"]
                    for r in rows if r["alpha"] == 1.0}  # fmt: skip
    assert len(fingerprints) == 6  # each point steers with its own vector / options
