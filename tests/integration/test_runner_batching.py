"""The runner's batching (token-length order, same-image groups) and its shared-prefix decoding, against
plain ``generate`` one sample at a time (the oracle) on the tiny LLaVA."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.images import image_identity, setting_text
from vlsafe.evals.metrics import compute_metrics
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import Sample

PROMPTS = [
    "tell me a long story about a red square please now and then more",
    "what is this",
    "describe the image in many words please",
    "hi",
    "what colour is the shape",
    "count the shapes",
]


def _samples(tmp_path: Path, paired: bool) -> list[Sample]:
    """One image per prompt, or (``paired``) image ``i % 2``: prompts 0, 2, 4 and 1, 3, 5 share an image."""
    out = []
    for i, text in enumerate(PROMPTS):
        k = i % 2 if paired else i
        rel = f"img/{k}.png"
        if not (tmp_path / rel).is_file():
            (tmp_path / "img").mkdir(exist_ok=True)
            Image.new("RGB", (64, 64), (40 * k, 90, 200 - 30 * k)).save(tmp_path / rel)
        out.append(Sample(id=f"s{i}", benchmark="t", text=text, kind="harmful" if i % 3 else "benign", image=rel))
    return out


def _cfg(tmp_path: Path, **kw) -> EvalConfig:
    base = {"model": "tiny", "benchmark": "t", "data_dir": str(tmp_path), "image_setting": "provided",
            "max_new_tokens": 6, "batch_size": 3}  # fmt: skip
    return EvalConfig(**{**base, **kw})


def _responses(run: Path) -> dict[str, str]:
    return {r["id"]: r["response"] for r in RunDir(run).records()}


@pytest.mark.parametrize("paired", [False, True])
def test_shared_prefix_runs_give_the_replies_of_one_sample_at_a_time(tiny_bundle, tmp_path, paired):
    bundle = tiny_bundle("llava")
    samples = _samples(tmp_path, paired)
    alone = {}
    for s in samples:
        run_eval(_cfg(tmp_path, batch_size=1), tmp_path / f"one-{s.id}", bundle=bundle, samples=[s], progress=False)
        alone.update(_responses(tmp_path / f"one-{s.id}"))
    plain = tmp_path / "plain"
    shared = tmp_path / "shared"
    run_eval(_cfg(tmp_path), plain, bundle=bundle, samples=samples, progress=False)
    run_eval(_cfg(tmp_path, shared_prefix=True), shared, bundle=bundle, samples=samples, progress=False)
    assert _responses(plain) == alone
    assert _responses(shared) == alone
    text = tmp_path / "text"
    run_eval(_cfg(tmp_path, image_setting="none", shared_prefix=True), text, bundle=bundle, samples=samples,
             progress=False)  # fmt: skip
    assert len(_responses(text)) == len(samples)


def test_batches_go_shortest_first_and_group_samples_that_show_one_image(tiny_bundle, tmp_path):
    bundle = tiny_bundle("llava")
    samples = _samples(tmp_path, paired=True)
    plain, shared = tmp_path / "plain", tmp_path / "shared"
    run_eval(_cfg(tmp_path), plain, bundle=bundle, samples=samples, progress=False)
    run_eval(_cfg(tmp_path, shared_prefix=True), shared, bundle=bundle, samples=samples, progress=False)
    lengths = {s.id: len(bundle.tokenizer(s.text)["input_ids"]) for s in samples}
    # records are written batch by batch in the order the runner formed the batches
    order = [r["id"] for r in RunDir(plain).records()]
    assert [lengths[i] for i in order] == sorted(lengths.values())
    order = [r["id"] for r in RunDir(shared).records()]
    images = [next(s.image for s in samples if s.id == i) for i in order]
    first = min(samples, key=lambda s: lengths[s.id]).image  # the group with the shortest prompt goes first
    assert images == [first] * 3 + [im for im in ("img/0.png", "img/1.png") if im != first] * 3
    batches = [r["timings"]["batch_size"] for r in RunDir(shared).records()]
    assert batches == [3] * 6


def test_steering_or_sampling_turns_shared_prefix_off(tiny_bundle, tmp_path):
    from vlsafe.evals.runner import _shared_prefix

    bundle = tiny_bundle("llava")
    assert _shared_prefix(bundle, _cfg(tmp_path, shared_prefix=True), None)
    assert not _shared_prefix(bundle, _cfg(tmp_path), None)
    assert not _shared_prefix(bundle, _cfg(tmp_path, shared_prefix=True, do_sample=True), None)
    assert not _shared_prefix(bundle, _cfg(tmp_path, shared_prefix=True), object())
    assert not _shared_prefix(tiny_bundle("qwen2_vl"), _cfg(tmp_path, shared_prefix=True), None)


def test_image_identity_and_setting_text():
    s = Sample(id="a", benchmark="t", text="how do I do this", kind="harmful", image="x.png")
    t = Sample(id="b", benchmark="t", text="something else", kind="benign", image="x.png")
    assert image_identity(s, "provided") == image_identity(t, "provided")
    assert image_identity(s, "blank", size=224) == image_identity(t, "blank", size=224)
    assert image_identity(s, "blank", size=224) != image_identity(s, "blank", size=336)
    assert image_identity(s, "noise") != image_identity(t, "noise")
    assert image_identity(s, "figstep") != image_identity(t, "figstep")
    assert image_identity(s, "none") is None and image_identity(s, "caption") is None
    assert setting_text(s, "figstep").startswith("The image shows a list numbered 1, 2, and 3")
    assert setting_text(s, "blank") == s.text


def test_open_answers_are_scored_by_short_answer_match_per_category():
    recs = [
        {"id": "1", "kind": "utility", "category": "colour", "answer": "red", "response": "Red.", "prediction": None},
        {"id": "2", "kind": "utility", "category": "colour", "answer": "red", "response": "blue", "prediction": None},
        {"id": "3", "kind": "utility", "category": "count", "answer": "three", "response": "3 shapes",
         "prediction": None},
    ]  # fmt: skip
    m = compute_metrics(recs)
    assert (m["overall"]["accuracy"]["k"], m["overall"]["accuracy"]["n"]) == (2, 3)
    assert m["by_category"]["colour"]["accuracy"]["k"] == 1 and m["by_category"]["count"]["accuracy"]["k"] == 1
