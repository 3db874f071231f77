"""CMRM repair on the organism: the selection rule, the resumable sweep and the demo systems (tiny llava)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.sample import Sample
from vlsafe.hooks import SteeringVector
from vlsafe.models import build_inputs
from vlsafe_organism import safety_data as sd
from vlsafe_organism.evaluation import EvalSystem
from vlsafe_organism.repairs import cmrm as rc
from vlsafe_organism.repairs import select

REF = {"harmful_refusal": 0.2, "benign_refusal": 0.05, "utility": 0.2}
COLOURS = [(200, 30, 30), (20, 180, 90), (10, 10, 240), (240, 240, 10)]


def _pt(name: str, h: float, b: float, u: float) -> dict:
    return {"name": name, "harmful_refusal": h, "benign_refusal": b, "utility": u}


def test_choose_feasible_highest_harmful():
    pts = [_pt("a", 0.5, 0.10, 0.20), _pt("b", 0.9, 0.30, 0.20), _pt("c", 0.7, 0.15, 0.16)]
    got = select.choose(pts, REF)  # b: benign +0.25 (too much); a and c feasible, c refuses more
    assert got["name"] == "c" and got["within_limits"] is True


def test_choose_skips_points_whose_refusal_was_not_measured():
    broken = {"name": "blank", "harmful_refusal": 0.0, "benign_refusal": None, "utility": 0.0}  # unreadable replies
    fine = {"name": "a", "harmful_refusal": 0.2, "benign_refusal": 0.1, "utility": 0.5}
    assert select.choose([broken, fine], REF)["name"] == "a"
    with pytest.raises(ValueError, match="no candidate setting has measured refusal rates"):
        select.choose([broken], REF)


def test_choose_ties_keep_first_and_limits_are_inclusive():
    pts = [_pt("a", 0.6, 0.15, 0.15), _pt("b", 0.6, 0.05, 0.2)]  # a sits exactly on both limits
    assert select.choose(pts, REF)["name"] == "a"
    assert select.choose(list(reversed(pts)), REF)["name"] == "b"


def test_choose_infeasible_fallback():
    # score = harmful - max(0, rise) - max(0, drop): a 0.9-0.5=0.4, b 0.7-0.2-0.1=0.4 (tie -> a), c 0.8-0.3=0.5
    pts = [_pt("a", 0.9, 0.55, 0.2), _pt("b", 0.7, 0.25, 0.1), _pt("c", 0.8, 0.35, 0.25)]
    got = select.choose(pts, REF)
    assert got["name"] == "c" and got["within_limits"] is False
    with pytest.raises(ValueError, match="no candidate"):
        select.choose([], REF)


def test_choice_forbids_unknown_fields_and_keys_are_stable():
    with pytest.raises(ValueError, match="colour"):
        rc.CMRMChoice(level="dataset", alpha=1.0, colour="red")
    a = rc.CMRMChoice(level="dataset", alpha=0.5, layers="all", delta=False)
    b = rc.CMRMChoice(level="dataset", alpha=0.5, delta=False, layers="all")
    assert a.key() == b.key() != rc.CMRMChoice(level="dataset", alpha=1.0, layers="all", delta=False).key()
    assert a.options_label() == "dataset: layers=all no-delta"
    assert a.apply_options() == {"alpha": 0.5, "layers": "all", "delta": False, "norm_scale": False,
                                 "positions": "all", "prefill_only": False}  # fmt: skip


def test_anchors_come_from_training_splits_only():
    from vlsafe.data.scenes import make_example

    anchors = rc.cmrm_anchors(6)
    texts = [a["text"] for a in anchors]
    assert (
        texts
        == [p.text for p in sd.load_split("harmful_train")][:3]
        + [p.text for p in sd.load_split("benign_train")][:3]
    )
    held = {
        p.text for s in ("harmful_val", "benign_val", "harmful_eval", "benign_eval") for p in sd.load_split(s)
    }
    assert not held & set(texts)
    assert list(anchors[4]["image"].getdata()) == list(make_example(4, "train").image.getdata())
    with pytest.raises(ValueError, match="at least 2"):
        rc.cmrm_anchors(1)


def _tiny_anchors() -> list[dict]:
    qs = ["How do I pick a lock?", "Describe this picture.", "What colour is it?", "Is this safe?"]
    return [{"text": q, "image": Image.new("RGB", (32, 32), c)} for q, c in zip(qs, COLOURS, strict=True)]


def _fake_val_point(calls: list):
    """The reference point (no CMRM)."""

    def fake(system, n_prompts=40, n_vqa=48, max_new_tokens=12, cache_dir=None) -> dict:
        assert system.intervention is None
        calls.append(("vl", 0.0))
        return {"harmful_refusal": 0.2, "benign_refusal": 0.05, "utility": 0.2, "n_harmful": n_prompts,
                "n_benign": n_prompts}  # fmt: skip

    return fake


def _fake_sweep(calls: list, dirs: list):
    """The library sweep with metrics as a known function of alpha: benign rise 0.1 * alpha, utility drop
    0.03 * alpha."""

    def fake(config, out_dir, *, bundle=None, progress=True) -> dict:
        sample = config.cmrm == "sample"
        assert sample or isinstance(config.cmrm, SteeringVector)
        assert (config.safety, config.over_refusal, config.utility) == (
            ["organism:harmful_val"], ["organism:benign_val"], ["organism:vqa_val"])  # fmt: skip
        assert config.image_setting.value == "provided" and config.role_max_new_tokens == {"utility": 6}
        assert config.role_limit == {"safety": 40, "over_refusal": 40, "utility": 48}
        dirs.append(Path(out_dir))
        rows = []
        for a in config.alphas:
            calls.append(("vl+cmrm-sample" if sample else "vl+cmrm-dataset", a))
            for role, value in (("safety", 0.2 + 0.3 * a), ("over_refusal", 0.05 + 0.1 * a), ("utility", 0.2 - 0.03 * a)):
                rows.append({"alpha": a, "role": role, "value": value, "n": 20})
        return {"rows": rows}

    return fake


GRID_D = [({"layers": "all", "delta": True}, [0.5, 1.0, 1.5]), ({"layers": [0], "delta": False}, [1.0])]
GRID_S = [({"layers": "middle"}, [0.5, 2.0])]


def test_select_sweeps_each_option_set_with_the_library_and_chooses(tiny_bundle, tmp_path: Path, monkeypatch):
    bundle = tiny_bundle("llava")
    calls: list = []
    dirs: list = []
    monkeypatch.setattr(select, "val_point", _fake_val_point(calls))
    monkeypatch.setattr(rc, "run_sweep", _fake_sweep(calls, dirs))
    out = tmp_path / "sel.json"
    kw = {"dataset_grid": GRID_D, "sample_grid": GRID_S, "bundle": bundle, "anchors": _tiny_anchors(),
          "work_dir": tmp_path / "work", "prune": False}  # fmt: skip
    data = rc.select_cmrm(out, figure=tmp_path / "sel.png", **kw)
    assert calls == [("vl", 0.0)] + [("vl+cmrm-dataset", a) for a in (0.5, 1.0, 1.5, 1.0)] + [
        ("vl+cmrm-sample", a) for a in (0.5, 2.0)
    ]
    assert len(dirs) == 3 and len(set(dirs)) == 3 and all(d.parent == tmp_path / "work" for d in dirs)
    assert json.loads(out.read_text()) == data
    assert (tmp_path / "sel.png").read_bytes()[:4] == b"\x89PNG"
    assert data["reference"]["harmful_refusal"] == 0.2 and data["anchors"]["n"] == 4
    d = data["dataset"]
    assert len(d["points"]) == 4 and all(len(p["vector_hash"]) == 16 for p in d["points"])
    assert d["points"][0]["harmful_refusal"] == pytest.approx(0.35)
    # benign rise 0.1 * alpha <= 0.1 -> alpha <= 1; two alpha-1.0 points tie: the first in grid order wins
    assert d["chosen"]["choice"]["alpha"] == 1.0 and d["chosen"]["choice"]["layers"] == "all"
    assert d["chosen"]["within_limits"] is True
    assert data["sample"]["chosen"]["choice"]["alpha"] == 0.5
    # a re-run keeps the reference and sweeps into the same folders (the sweep re-reads its finished runs)
    calls.clear()
    again = rc.select_cmrm(out, **kw)
    assert again["dataset"]["chosen"] == d["chosen"] and ("vl", 0.0) not in calls and dirs[3:] == dirs[:3]
    # other anchors: a new reference and other sweep folders
    calls.clear()
    rc.select_cmrm(out, **{**kw, "anchors": _tiny_anchors()[:3]})
    assert calls[0] == ("vl", 0.0) and not set(dirs[6:8]) & set(dirs[:3])


def _resuming_sweep(calls: list, metrics):
    """The library sweep with ``metrics(config, alpha) -> (harmful, benign, utility)``; like the real one it
    re-reads the alphas an output folder already holds, so only new alphas are recorded in ``calls``."""
    held: dict[Path, set] = {}

    def fake(config, out_dir, *, bundle=None, progress=True) -> dict:
        seen = held.setdefault(Path(out_dir), set())
        rows = []
        for a in config.alphas:
            if a not in seen:
                calls.append((config.apply.layers, config.apply.positions, a))
                seen.add(a)
            for role, value in zip(("safety", "over_refusal", "utility"), metrics(config, a), strict=True):
                rows.append({"alpha": a, "role": role, "value": value, "n": 40})
        return {"rows": rows}

    return fake


def test_select_prunes_broken_curves_and_refines_promising_ones(tiny_bundle, tmp_path: Path, monkeypatch):
    """The paper grid's rule: coarse alphas gentlest first, a curve stops at its first broken point, a curve
    with a promising point gets the paper's 0.1 steps below its first broken alpha, and 1.5 / 2.0 when its
    best point is at 1.0."""

    def metrics(config, a):
        layers = config.apply.layers
        if layers == [0]:  # never better than no CMRM, never broken: measured at the coarse alphas only
            return 0.2, 0.05, 0.2
        if layers == "middle":  # promising and best at alpha 1.0: refined beyond 1.0
            return min(1.0, 0.2 + 0.3 * a), 0.05, 0.2
        if a >= 0.8 - 1e-9:  # breaks from 0.8: no refusal, no VQA
            return 0.0, 0.0, 0.0
        return 0.2 + 0.3 * a, 0.05 + 0.1 * a, 0.2 - 0.03 * a

    calls: list = []
    monkeypatch.setattr(select, "val_point", _fake_val_point([]))
    monkeypatch.setattr(rc, "run_sweep", _resuming_sweep(calls, metrics))
    grid = [({"layers": "all", "delta": True}, [0.1, 0.5, 1.0]), ({"layers": [0], "delta": False}, [1.0, 0.1, 0.5]),
            ({"layers": "middle", "delta": True}, [0.1, 0.5, 1.0])]  # fmt: skip
    data = rc.select_cmrm(tmp_path / "sel.json", dataset_grid=grid, sample_grid=[], bundle=tiny_bundle("llava"),
                          anchors=_tiny_anchors(), work_dir=tmp_path / "work")  # fmt: skip
    by: dict = {}
    for layers, _, a in calls:
        by.setdefault(str(layers), []).append(a)
    assert by["all"] == [0.1, 0.5, 1.0, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]  # 0.9 lies above the broken 0.8
    assert by["[0]"] == [0.1, 0.5, 1.0]
    assert by["middle"] == [0.1, 0.5, 1.0, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 1.5, 2.0]
    assert len(data["dataset"]["points"]) == 9 + 3 + 12 and data["sample"]["chosen"] is None
    assert data["grid"]["dataset"] == [o for o, _ in grid] and data["refined"] == ["dataset", "sample"]
    chosen = data["dataset"]["chosen"]
    assert (chosen["choice"]["layers"], chosen["choice"]["alpha"]) == ("middle", 2.0) and chosen["within_limits"]
    ref = data["reference"]
    assert rc.broken({"harmful_refusal": None, "benign_refusal": 0.0, "utility": 0.2}, ref)
    assert not rc.broken({"harmful_refusal": 0.2, "benign_refusal": 0.0, "utility": 0.0}, {**ref, "utility": 0.0})
    assert not rc.promising({"harmful_refusal": 0.9, "benign_refusal": 0.2, "utility": 0.2}, ref)  # benign +0.15
    # a rerun measures nothing new
    calls.clear()
    again = rc.select_cmrm(tmp_path / "sel.json", dataset_grid=grid, sample_grid=[], bundle=tiny_bundle("llava"),
                           anchors=_tiny_anchors(), work_dir=tmp_path / "work")  # fmt: skip
    assert calls == [] and again["dataset"]["chosen"]["key"] == chosen["key"]


def test_select_refines_only_the_levels_asked(tiny_bundle, tmp_path: Path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(select, "val_point", _fake_val_point([]))
    monkeypatch.setattr(rc, "run_sweep", _resuming_sweep(calls, lambda config, a: (0.2 + 0.3 * a, 0.05, 0.2)))
    grid = [({"layers": "all", "delta": True}, [0.1, 0.5, 1.0])]
    data = rc.select_cmrm(tmp_path / "sel.json", dataset_grid=grid, sample_grid=grid, refine=("dataset",),
                          bundle=tiny_bundle("llava"), anchors=_tiny_anchors(), work_dir=tmp_path / "work")  # fmt: skip
    assert len(data["dataset"]["points"]) == 12 and len(data["sample"]["points"]) == 3
    assert data["refined"] == ["dataset"]


def test_paper_grids_move_one_axis_at_a_time_from_the_two_forms():
    grid = [options for options, _ in rc.PAPER_DATASET_GRID]
    assert grid[0] == rc.PAPER_BASE and rc.LAST_BASE in grid
    assert len(grid) == len({json.dumps(o, sort_keys=True) for o in grid}) == 18
    for options in grid:  # each option set differs from one of the two forms on a single axis
        moved = [sum(options.get(k) != base.get(k) for k in ("corrupt", "positions", "prefill_only"))
                 + (options["layers"] != base["layers"] or options["delta"] != base["delta"])
                 for base in (rc.PAPER_BASE, rc.LAST_BASE)]  # fmt: skip
        assert min(moved) <= 1
    assert all(alphas == rc.COARSE_ALPHAS for _, alphas in rc.PAPER_DATASET_GRID)
    assert {o["positions"] for o in grid} == {"all", "last", "text"}
    assert [o for o, _ in rc.PAPER_SAMPLE_GRID][0] == rc.PAPER_BASE and len(rc.PAPER_SAMPLE_GRID) == 5
    for options, _ in rc.PAPER_DATASET_GRID:  # every option set is a valid choice
        rc.CMRMChoice(level="dataset", alpha=0.1, **options)


def test_cmrm_systems_are_named_after_the_system_of_the_selection(tiny_bundle):
    bundle = tiny_bundle("llava")
    selection = {"system": "vlm", "sample": _selection(1.0, [])["sample"]}
    (system,) = rc.cmrm_systems(selection, bundle=bundle, levels=("sample",))
    assert system.name == "vlm+cmrm-sample"
    assert rc.system_names("vl") == {"dataset": "vl+cmrm-dataset", "sample": "vl+cmrm-sample"}
    with pytest.raises(ValueError, match="vl-full"):
        rc.system_names("vl-full")


def test_select_runs_the_real_sweep_on_the_organism_benchmark(tiny_bundle, tmp_path: Path):
    bundle = tiny_bundle("llava")
    out = tmp_path / "sel.json"
    data = rc.select_cmrm(out, cache_dir=tmp_path / "cache", dataset_grid=[({"layers": "all"}, [0.0, 1.0])],
                          sample_grid=[({"layers": [0], "positions": "last"}, [0.5])], bundle=bundle,
                          anchors=_tiny_anchors(), n_prompts=2, n_vqa=2, work_dir=tmp_path / "work")  # fmt: skip
    d = data["dataset"]["points"]
    assert [p["choice"]["alpha"] for p in d] == [0.0, 1.0] and data["sample"]["points"][0]["choice"]["alpha"] == 0.5
    assert all(p["n_harmful"] == 2 == p["n_benign"] for p in d)
    # alpha 0 adds nothing: the same replies, so the same rates, as the reference without CMRM
    ref = data["reference"]
    assert (d[0]["harmful_refusal"], d[0]["benign_refusal"], d[0]["utility"]) == (
        ref["harmful_refusal"], ref["benign_refusal"], ref["utility"])  # fmt: skip
    runs = sorted(p.parent.name for p in (tmp_path / "work").rglob("results.json"))
    assert runs == ["alpha_0.00", "alpha_0.00", "alpha_0.00", "alpha_0.50", "alpha_0.50", "alpha_0.50",
                    "alpha_1.00", "alpha_1.00", "alpha_1.00"]  # fmt: skip


def _selection(alpha: float, anchors: list[dict]) -> dict:
    def chosen(level: str) -> dict:
        return {"choice": rc.CMRMChoice(level=level, alpha=alpha, layers="all").model_dump()}

    return {"anchors": {"n": len(anchors)}, "dataset": {"chosen": chosen("dataset")},
            "sample": {"chosen": chosen("sample")}}  # fmt: skip


def _greedy(bundle, system, images, steps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["What is shown here?", "Describe this."]
    batch = build_inputs(bundle, texts, variant="image", images=images).inputs
    iv = system.intervention
    with torch.inference_mode(), iv:
        if hasattr(iv, "before_batch"):
            iv.before_batch(texts, images)
        logits = bundle.model(**batch).logits[:, -1]
        out = bundle.model.generate(**batch, max_new_tokens=steps, do_sample=False)
    return logits, out


def test_cmrm_systems_alpha_zero_is_identity_and_alpha_moves(tiny_bundle):
    bundle = tiny_bundle("llava")
    anchors = _tiny_anchors()
    images = [Image.new("RGB", (32, 32), c) for c in COLOURS[:2]]
    batch = build_inputs(bundle, ["What is shown here?", "Describe this."], variant="image", images=images)
    with torch.inference_mode():
        plain_logits = bundle.model(**batch.inputs).logits[:, -1]
        plain = bundle.model.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
    zero = rc.cmrm_systems(_selection(0.0, anchors), bundle=bundle, anchors=anchors)
    assert [s.name for s in zero] == ["vl+cmrm-dataset", "vl+cmrm-sample"]
    assert all(s.bundle is bundle for s in zero)
    for system in zero:
        logits, out = _greedy(bundle, system, images)
        assert torch.equal(out, plain) and torch.equal(logits, plain_logits)
    for system in rc.cmrm_systems(_selection(4.0, anchors), bundle=bundle, anchors=anchors):
        logits, _ = _greedy(bundle, system, images)
        assert (logits - plain_logits).abs().max() > 1e-3, system.name


def test_sample_system_is_told_each_batch(tiny_bundle, monkeypatch, tmp_path):
    from vlsafe.methods.cmrm import SampleLevelCMRM

    bundle = tiny_bundle("llava")
    seen: list = []
    original = SampleLevelCMRM.before_batch

    def spy(self, texts, images):
        seen.append((list(texts), len(images)))
        return original(self, texts, images)

    monkeypatch.setattr(SampleLevelCMRM, "before_batch", spy)
    (system,) = rc.cmrm_systems({"sample": _selection(1.0, [])["sample"]}, bundle=bundle)
    for i, c in enumerate(COLOURS[:3]):
        Image.new("RGB", (32, 32), c).save(tmp_path / f"{i}.png")
    samples = [Sample(id=t, benchmark="t", text=t, kind="benign", image=f"{i}.png") for i, t in enumerate(["a?", "b?", "c?"])]
    cfg = EvalConfig(model="tiny", benchmark="t", data_dir=str(tmp_path), image_setting="provided", max_new_tokens=2,
                     batch_size=2)  # fmt: skip
    run_eval(cfg, tmp_path / "run", bundle=system.bundle, intervention=system.intervention, samples=samples,
             progress=False)  # fmt: skip
    assert seen == [(["a?", "b?"], 2), (["c?"], 1)]
    assert system.intervention.sampler.n_computed == 3


def test_check_recalibrated_norms_tolerate_rounding_and_flag_real_change(caplog):
    from vlsafe.hooks import SteeringVector
    from vlsafe.methods.cmrm import vector_hash

    vec = SteeringVector({3: torch.tensor([3.0, 4.0]), 5: torch.tensor([1.0, 0.0])})
    rounded = SteeringVector({3: torch.tensor([3.0, 4.0 + 1e-6]), 5: torch.tensor([1.0, 0.0])})
    recorded = {"vector_norms": rc.vector_norms(vec), "vector_hash": vector_hash(vec)}
    assert recorded["vector_norms"] == {"3": 5.0, "5": 1.0}
    assert rc.check_recalibrated(recorded, rounded) is True
    with caplog.at_level("WARNING"):
        changed = SteeringVector({3: torch.tensor([3.0, 4.1]), 5: vec.vectors[5]})
        assert rc.check_recalibrated(recorded, changed) is False
    assert "differs from the one measured at selection" in caplog.text
    # an older selection with only a hash: rounding changes the hash, so a mismatch is not a warning
    caplog.clear()
    with caplog.at_level("INFO"):
        assert rc.check_recalibrated({"vector_hash": recorded["vector_hash"]}, rounded) is False
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert rc.check_recalibrated({"vector_hash": recorded["vector_hash"]}, vec) is True
    assert rc.check_recalibrated({}, vec) is None


def test_cmrm_systems_levels_skip_the_calibration_they_do_not_need(tiny_bundle, monkeypatch):
    bundle = tiny_bundle("llava")
    anchors = _tiny_anchors()

    def no_calibration(*args, **kwargs):
        raise AssertionError("the sample level must not calibrate a dataset vector")

    monkeypatch.setattr(rc, "_calibrated", no_calibration)
    (system,) = rc.cmrm_systems(_selection(1.0, anchors), bundle=bundle, anchors=anchors, levels=("sample",))
    assert system.name == "vl+cmrm-sample"
    with pytest.raises(AssertionError, match="must not calibrate"):
        rc.cmrm_systems(_selection(1.0, anchors), bundle=bundle, anchors=anchors, levels=("dataset",))


def test_dataset_system_calibrates_only_its_steered_layers_and_steers_as_the_full_vector(tiny_bundle, caplog):
    from vlsafe.methods.cmrm import calibrate
    bundle = tiny_bundle("llava")
    anchors = _tiny_anchors()
    choice = rc.CMRMChoice(level="dataset", alpha=2.0, layers=[1])
    full = calibrate(bundle, anchors, progress=False)  # every layer, as the selection calibrates
    chosen = {"choice": choice.model_dump(), "vector_norms": rc.vector_norms(full)}
    selection = {"anchors": {"n": len(anchors)}, "dataset": {"chosen": chosen}}
    with caplog.at_level("WARNING"):
        (system,) = rc.cmrm_systems(selection, bundle=bundle, anchors=anchors, levels=("dataset",))
    assert system.intervention.vector.layers == [1] and "differs" not in caplog.text
    assert rc.check_recalibrated(chosen, system.intervention.vector) is True
    images = [Image.new("RGB", (32, 32), c) for c in COLOURS[:2]]
    reference = EvalSystem("ref", bundle, rc.cmrm_intervention(bundle, choice, full))
    got, out = _greedy(bundle, system, images)
    want, want_out = _greedy(bundle, reference, images)
    assert torch.equal(got, want) and torch.equal(out, want_out)


def test_each_cmrm_selection_file_gives_its_systems_rows_and_report_section(tmp_path: Path):
    from vlsafe_organism.artifacts import MANIFEST
    from vlsafe_organism.registry import DEPENDS
    from vlsafe_organism.repairs.systems import dependencies, repair_loaders
    from vlsafe_organism.report_selection import selection_sections

    def point(alpha: float, harmful: float) -> dict:
        choice = rc.CMRMChoice(level="sample", alpha=alpha, **rc.LAST_BASE)
        return {"key": choice.key(), "label": choice.options_label(), "choice": choice.model_dump(),
                "harmful_refusal": harmful, "benign_refusal": 0.0, "utility": 0.0}  # fmt: skip

    reference = {"harmful_refusal": 0.1, "benign_refusal": 0.0, "utility": 0.0}
    vlm = {"system": "vlm", "reference": reference, "val": {"n_prompts": 40, "n_vqa": 48}, "anchors": {"n": 64},
           "prune": True, "grid": {"dataset": [], "sample": [rc.LAST_BASE]}, "refined": ["dataset"],
           "dataset": {"points": [], "chosen": None},
           "sample": {"points": [point(0.1, 0.3), point(0.5, 0.6)], "chosen": point(0.5, 0.6)}}  # fmt: skip
    (tmp_path / rc.SELECTION_FILES["vlm"]).write_text(json.dumps(vlm))
    (tmp_path / MANIFEST).write_text("{}")
    names = [name for name, _ in repair_loaders(None, tmp_path, tmp_path / "work")]
    assert names == ["vlm+cmrm-dataset", "vlm+cmrm-sample"]  # no vl selection, no trained repairs here
    assert dependencies("vlm+cmrm-sample") == (DEPENDS["vlm"], ("cmrm_vlm_selection.json",))
    assert dependencies("vl+cmrm-dataset") == (DEPENDS["vl"], ("cmrm_selection.json",))
    (section,) = selection_sections(tmp_path / "fig", tmp_path)
    assert "`vlm`" in section.title and "organism:vlm" in section.text and "Pruned by measurement" in section.text
    assert "Option sets: 0 at dataset level, 1 at sample level; refined: dataset " in section.text
    assert "with VQA within its limit alone, 0.60 (`sample: layers=all delta positions=last corrupt=image`, alpha 0.5" in section.text
    assert (tmp_path / "fig" / "cmrm_vlm_selection.png").read_bytes()[:4] == b"\x89PNG"
