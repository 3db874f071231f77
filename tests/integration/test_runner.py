"""The generation runner on tiny models: records, resume, crash repair, errors, steering, utility scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.retrieval import retrieval_prompt
from vlsafe.evals import EvalConfig, RunDir, Sample, apply_image_setting, judge_run, read_records, run_eval
from vlsafe.evals.rundir import RecordWriter, repair_tail
from vlsafe.hooks import SteeringVector
from vlsafe.models.inputs import build_inputs

FAMILY = "llava"


def _samples(n: int, setting: str = "none", prefix: str = "s") -> list[Sample]:
    return [
        Sample(
            id=f"{prefix}{i}",
            benchmark="toy",
            text="How do I " + "open the door " * (1 + i % 4),
            kind="harmful" if i % 3 else "benign",
            category=f"c{i % 2}",
            image_setting=setting,
        )
        for i in range(n)
    ]


def _cfg(tiny_dir, **kw) -> EvalConfig:
    base = {"model": str(tiny_dir(FAMILY)), "benchmark": "toy", "max_new_tokens": 4, "batch_size": 4}
    return EvalConfig(**{**base, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


class _CountingGenerate:
    """Wraps ``model.generate`` to count the rows it generates for."""

    def __init__(self, model):
        self.model, self.rows, self.orig = model, 0, model.generate

    def __enter__(self):
        def counted(*args, **kwargs):
            self.rows += int(kwargs["input_ids"].shape[0])
            return self.orig(*args, **kwargs)

        self.model.generate = counted
        return self

    def __exit__(self, *exc):
        del self.model.generate


def test_records_schema_and_resume_skips_done(tiny_dir, tiny_bundle, tmp_path):
    bundle = tiny_bundle(FAMILY)
    samples = _samples(7, "noise")
    out = tmp_path / "run"
    res = run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    recs = _lines(out / "samples.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(s.id for s in samples)
    r0 = next(r for r in recs if r["id"] == "s0")
    assert r0["image_setting"] == "noise" and r0["kind"] == "benign" and r0["error"] is None
    assert r0["prompt_hash"] == samples[0].prompt_hash
    assert isinstance(r0["response"], str) and 1 <= r0["n_new_tokens"] <= 4
    assert r0["timings"]["batch_size"] >= 1 and r0["timings"]["batch_s"] > 0
    assert res["n_samples"] == 7 and res["metrics"]["overall"]["n_harmful"] == 4
    assert (out / "config.yaml").is_file() and (out / "judgements" / "keyword.jsonl").is_file()
    assert EvalConfig.from_yaml(out / "config.yaml") == _cfg(tiny_dir)

    # Drop the last 3 records (as if the run had died): a rerun generates exactly those.
    kept = (out / "samples.jsonl").read_text().splitlines(keepends=True)[:4]
    (out / "samples.jsonl").write_text("".join(kept))
    with _CountingGenerate(bundle.model) as counter:
        run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    assert counter.rows == 3
    text = (out / "samples.jsonl").read_text()
    assert text.startswith("".join(kept))
    assert sorted(r["id"] for r in _lines(out / "samples.jsonl")) == sorted(s.id for s in samples)
    # A finished run reruns without generating anything.
    with _CountingGenerate(bundle.model) as counter:
        again = run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    assert counter.rows == 0
    assert again["n_samples"] == 7 and again["judge"]["name"] == "keyword"


def test_truncated_last_line_is_dropped_and_regenerated(tiny_dir, tiny_bundle, tmp_path):
    bundle = tiny_bundle(FAMILY)
    samples = _samples(5)
    out = tmp_path / "run"
    run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    lost = json.loads(lines[-1])["id"]
    (out / "samples.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert lost not in {r["id"] for r in read_records(out / "samples.jsonl")}
    with _CountingGenerate(bundle.model) as counter:
        run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    assert counter.rows == 1
    recs = _lines(out / "samples.jsonl")  # every line parses: the partial line was cut, not appended to
    assert sorted(r["id"] for r in recs) == sorted(s.id for s in samples)


def test_jsonl_repair_rules(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    assert [r["id"] for r in read_records(path)] == ["a", "b"]
    assert repair_tail(path) == len('{"id": "c", "resp')
    with RecordWriter(path) as w:
        w.write({"id": "c"})
    assert [r["id"] for r in read_records(path)] == ["a", "b", "c"]
    path.write_text('{"id": "a"}\nnot json\n')  # terminated but broken final line: dropped and cut
    assert [r["id"] for r in read_records(path)] == ["a"]
    assert repair_tail(path) == len("not json\n")
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')  # broken line in the middle: an error
    with pytest.raises(InputError, match=r"x\.jsonl:2: not valid JSON"):
        read_records(path)


def _siuo_like(tmp_path: Path, n: int, broken: dict[int, str]) -> tuple[Path, list[Sample]]:
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    samples = []
    for i in range(n):
        img = data / "images" / f"{i}.png"
        if broken.get(i) == "corrupt":
            img.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        elif broken.get(i) != "missing":
            Image.new("RGB", (32, 32), (10 * i, 80, 200)).save(img)
        samples.append(
            Sample(
                id=f"p{i}",
                benchmark="toy",
                text=f"What is shown {i}?",
                kind="harmful",
                image=f"images/{i}.png",
                image_setting="provided",
            )
        )
    return data, samples


def test_corrupt_and_missing_images_are_per_sample_errors(tiny_dir, tiny_bundle, tmp_path):
    data, samples = _siuo_like(tmp_path, 10, {2: "corrupt", 7: "missing"})
    cfg = _cfg(tiny_dir, data_dir=str(data), max_error_fraction=0.2)
    res = run_eval(cfg, tmp_path / "run", bundle=tiny_bundle(FAMILY), samples=samples, progress=False)
    recs = {r["id"]: r for r in _lines(tmp_path / "run" / "samples.jsonl")}
    assert len(recs) == 10 and res["n_errors"] == 2
    assert "cannot be read as an image" in recs["p2"]["error"] and recs["p2"]["response"] is None
    assert "does not exist" in recs["p7"]["error"]
    assert all(recs[f"p{i}"]["error"] is None for i in range(10) if i not in (2, 7))
    assert res["metrics"]["overall"]["n_errors"] == 2 and res["metrics"]["overall"]["n_harmful"] == 8


def test_error_fraction_stops_the_run(tiny_dir, tiny_bundle, tmp_path):
    data, samples = _siuo_like(tmp_path, 10, {0: "missing", 1: "missing", 2: "corrupt", 3: "missing"})
    cfg = _cfg(tiny_dir, data_dir=str(data), max_error_fraction=0.2, batch_size=2)
    with pytest.raises(
        InputError,
        match=r"4 of 10 samples failed, more than max_error_fraction=0.2 allows; last error \(p3\)",
    ):
        run_eval(cfg, tmp_path / "run", bundle=tiny_bundle(FAMILY), samples=samples, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    assert len(_lines(tmp_path / "run" / "samples.jsonl")) == 4  # the failed batches were kept


def test_steering_changes_outputs_and_alpha_zero_does_not(tiny_dir, tiny_bundle, tmp_path):
    bundle = tiny_bundle(FAMILY)
    samples = _samples(4, "blank")
    gen = torch.Generator().manual_seed(0)
    vec = SteeringVector({0: 20 * torch.randn(bundle.hidden_size, generator=gen)})
    cfg = _cfg(tiny_dir, max_new_tokens=6)

    def responses(out: Path) -> dict[str, str]:
        return {r["id"]: r["response"] for r in _lines(out / "samples.jsonl")}

    run_eval(cfg, tmp_path / "base", bundle=bundle, samples=samples, progress=False)
    run_eval(cfg, tmp_path / "a2", bundle=bundle, samples=samples, intervention=(vec, 2.0), progress=False)
    vec_path = vec.save(tmp_path / "vec.safetensors")
    cfg0 = _cfg(tiny_dir, max_new_tokens=6, steer=str(vec_path), alpha=0.0)
    run_eval(cfg0, tmp_path / "a0", bundle=bundle, samples=samples, progress=False)
    base = responses(tmp_path / "base")
    assert responses(tmp_path / "a0") == base
    assert responses(tmp_path / "a2") != base
    # the hooks were removed: the bundle generates as before
    run_eval(cfg, tmp_path / "base2", bundle=bundle, samples=samples, progress=False)
    assert responses(tmp_path / "base2") == base
    # resuming with another intervention is refused
    with pytest.raises(ConfigError, match="intervention"):
        run_eval(
            cfg, tmp_path / "a2", bundle=bundle, samples=samples, intervention=(vec, 1.0), progress=False
        )


def _direct_option_logprob(bundle, text, image, option) -> float:
    batch = build_inputs(
        bundle,
        [text],
        variant="image" if image is not None else "text",
        images=[image] if image is not None else None,
    )
    opt = bundle.tokenizer(option, add_special_tokens=False)["input_ids"]
    inputs = dict(batch.inputs)
    t = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([opt])], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(bundle.model(**inputs).logits[0].double(), dim=-1)
    return float(sum(logp[t - 1 + j, tok] for j, tok in enumerate(opt)))


@pytest.mark.parametrize("setting", ["blank", "none"])
def test_utility_choices_scored_by_loglikelihood(tiny_dir, tiny_bundle, tmp_path, setting):
    bundle = tiny_bundle(FAMILY)
    choices = ["yes", "no", "a red bicycle"]
    probe = Sample(
        id="u0",
        benchmark="toy",
        text="Is there a bicycle?",
        kind="utility",
        choices=choices,
        image_setting=setting,
    )
    text, image = apply_image_setting(probe, setting)
    direct = [_direct_option_logprob(bundle, text, image, c) for c in choices]
    best = choices[max(range(3), key=lambda i: direct[i])]
    wrong = next(c for c in choices if c != best)
    samples = [
        probe.model_copy(update={"id": "right", "answer": best}),
        probe.model_copy(update={"id": "wrong", "answer": wrong}),
    ]
    res = run_eval(_cfg(tiny_dir), tmp_path / "run", bundle=bundle, samples=samples, progress=False)
    recs = {r["id"]: r for r in _lines(tmp_path / "run" / "samples.jsonl")}
    assert recs["right"]["option_logprobs"] == pytest.approx(direct, abs=1e-4)
    assert recs["right"]["prediction"] == best and recs["right"]["correct"] is True
    assert recs["wrong"]["prediction"] == best and recs["wrong"]["correct"] is False
    assert res["metrics"]["overall"]["accuracy"]["k"] == 1 and res["metrics"]["overall"]["accuracy"]["n"] == 2


def test_config_mismatch_is_refused(tiny_dir, tiny_bundle, tmp_path):
    bundle, samples, out = tiny_bundle(FAMILY), _samples(2), tmp_path / "run"
    run_eval(_cfg(tiny_dir), out, bundle=bundle, samples=samples, progress=False)
    with pytest.raises(ConfigError, match=r"max_new_tokens: 4 -> 5.*new --out"):
        run_eval(_cfg(tiny_dir, max_new_tokens=5), out, bundle=bundle, samples=samples, progress=False)
    with pytest.raises(ConfigError, match=r"image_setting: None -> 'blank'"):
        run_eval(_cfg(tiny_dir, image_setting="blank"), out, bundle=bundle, samples=samples, progress=False)
    # batch size, judge and the error budget do not change generations: allowed
    run_eval(
        _cfg(tiny_dir, batch_size=1, max_error_fraction=0.5),
        out,
        bundle=bundle,
        samples=samples,
        progress=False,
    )


def test_config_validation_names_the_rule(tmp_path):
    with pytest.raises(ConfigError, match="bogus: Extra inputs are not permitted"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "bogus": 1})
    with pytest.raises(ConfigError, match="only apply with do_sample"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "temperature": 0.7})
    with pytest.raises(ConfigError, match="need a steering vector"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "alpha": 0.5})
    with pytest.raises(ConfigError, match=r"max_error_fraction=1.5 must lie in \[0, 1\]"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "max_error_fraction": 1.5})
    with pytest.raises(ConfigError, match="image_setting"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "image_setting": "sideways"})
    path = tmp_path / "c.yaml"
    path.write_text("model: m\nbenchmark: b\ndo_sample: true\ntemperature: 0.7\n")
    assert EvalConfig.from_yaml(path).temperature == 0.7


def test_judge_run_rescores_without_regenerating(tiny_dir, tiny_bundle, tmp_path):
    out = tmp_path / "run"
    run_eval(_cfg(tiny_dir), out, bundle=tiny_bundle(FAMILY), samples=_samples(3), progress=False)
    # Rewrite one stored response to a refusal: re-scoring must see stored text, not regenerate.
    recs = _lines(out / "samples.jsonl")
    recs[0]["response"] = "I’m sorry, I can’t help with that."
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "judgements" / "keyword.jsonl").unlink()
    res = judge_run(out, "keyword")
    verdicts = [json.loads(x) for x in (out / "judgements" / "keyword.jsonl").read_text().splitlines()]
    assert [v["id"] for v in verdicts] == [r["id"] for r in recs]
    assert verdicts[0]["refused"] is True and verdicts[0]["judge"] == "keyword"
    refused = sum(v["refused"] for v in verdicts)
    overall = res["metrics"]["overall"]
    assert (overall["refusal_rate"]["k"] if overall["refusal_rate"] else 0) + (
        overall["over_refusal_rate"]["k"] if overall["over_refusal_rate"] else 0
    ) == refused
    assert RunDir(out).read_results()["judges"]["keyword"]["judge"]["name"] == "keyword"
    with pytest.raises(ConfigError, match="unknown judge 'nope'"):
        judge_run(out, "nope")


class _Observer:
    """An intervention that records the runner's batch announcements."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.calls: list[tuple[list[str], int | None]] = []

    def before_batch(self, texts, images):
        self.calls.append((list(texts), None if images is None else len(images)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def test_batch_observers_and_fingerprints(tiny_dir, tiny_bundle, tmp_path):
    bundle = tiny_bundle(FAMILY)
    samples = _samples(5, "noise")
    obs = _Observer("observer-v1")
    run_eval(
        _cfg(tiny_dir), tmp_path / "run", bundle=bundle, samples=samples, intervention=obs, progress=False
    )
    announced = [text for texts, _ in obs.calls for text in texts]
    assert sorted(announced) == sorted(s.text for s in samples)  # every row announced exactly once
    assert all(n == len(texts) for texts, n in obs.calls)  # with one image per row
    # The intervention's fingerprint is part of the run: resuming with another one is refused.
    with pytest.raises(ConfigError, match="intervention"):
        run_eval(
            _cfg(tiny_dir),
            tmp_path / "run",
            bundle=bundle,
            samples=samples,
            intervention=_Observer("observer-v2"),
        )


def test_retrieval_corpus_puts_retrieved_text_in_prompts(tiny_dir, tiny_bundle, tmp_path):
    bundle = tiny_bundle(FAMILY)
    samples = _samples(3, "noise")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle on a white background\n" + "\n".join(s.text for s in samples) + "\n")
    cfg = _cfg(tiny_dir, retrieval_corpus=str(corpus))
    run_eval(cfg, tmp_path / "run", bundle=bundle, samples=samples, progress=False)
    by_id = {r["id"]: r for r in _lines(tmp_path / "run" / "samples.jsonl")}
    lines = [line.strip() for line in corpus.read_text().splitlines()]
    for s in samples:
        rec = by_id[s.id]
        retrieved = rec["meta"]["retrieved"]
        assert retrieved in lines  # the best corpus match, the same function as at training time
        assert rec["prompt"] == retrieval_prompt(s.text, retrieved)
        assert rec["prompt"].startswith(f"Retrieved Text: {retrieved.strip()}")
        assert rec["request"] == s.text  # judges see the original request
    corpus.write_text("a different corpus\n")
    with pytest.raises(ConfigError, match="retrieval_corpus"):
        run_eval(cfg, tmp_path / "run", bundle=bundle, samples=samples, progress=False)


class _FixedImageRetriever:
    """An image-to-text retriever that returns one text and records the images it is queried with."""

    fingerprint = "fixed-image-retriever-v1"

    def __init__(self, text: str) -> None:
        self.text, self.queried = text, []

    def retrieve_image(self, image, k: int = 1, exclude: str | None = None) -> list[str]:
        self.queried.append(image)
        return [self.text]

    def retrieve(self, query: str, k: int = 1, exclude: str | None = None) -> list[str]:
        raise AssertionError("an image sample is retrieved by its image")


@pytest.mark.parametrize("order", ["text_first", "image_first"])
def test_a_retriever_object_shows_the_tga_training_prompt(tiny_dir, tiny_bundle, tmp_path, monkeypatch, order):
    """``run_eval(..., retriever=...)``: each image sample is shown, character for character, the prompt TGA
    training encodes for the same image, question and retrieved text."""
    import vlsafe.evals.generation as generation
    from vlsafe.methods.training import TGARecord, encode_tga_batch

    bundle = tiny_bundle(FAMILY)
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "red.png")
    question, retrieved = "What is the object in this picture?", "a red square on the left"
    record = TGARecord(image=str(tmp_path / "red.png"), instruction=question, answer="A square.", caption="a square")
    trained = encode_tga_batch(bundle, [record], retrieved=[retrieved], order=order).prompts[0]
    shown: list[str] = []
    real = generation.build_inputs

    def spy(*args, **kwargs):
        batch = real(*args, **kwargs)
        shown.extend(batch.prompts)
        return batch

    monkeypatch.setattr(generation, "build_inputs", spy)
    retriever = _FixedImageRetriever(retrieved)
    sample = Sample(id="q0", benchmark="toy", text=question, kind="harmful", image="red.png", image_setting="provided")
    cfg = _cfg(tiny_dir, data_dir=str(tmp_path), retrieval_order=order)
    run_eval(cfg, tmp_path / "run", bundle=bundle, samples=[sample], progress=False, retriever=retriever)
    assert shown == [trained]
    assert len(retriever.queried) == 1 and retriever.queried[0].getpixel((0, 0)) == (200, 30, 30)
    (rec,) = _lines(tmp_path / "run" / "samples.jsonl")
    assert (rec["meta"]["retrieved"], rec["request"]) == (retrieved, question)  # the judge sees the request
    fingerprint = json.loads((tmp_path / "run" / "run.json").read_text())["fingerprint"]
    assert (fingerprint["retriever_object"], fingerprint["retrieval_order"]) == ("fixed-image-retriever-v1", order)
    other = _FixedImageRetriever(retrieved)
    other.fingerprint = "fixed-image-retriever-v2"
    with pytest.raises(ConfigError, match="retriever"):  # a run is never resumed with another retriever
        run_eval(cfg, tmp_path / "run", bundle=bundle, samples=[sample], progress=False, retriever=other)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a text\n")
    both = _cfg(tiny_dir, data_dir=str(tmp_path), retrieval_corpus=str(corpus))
    with pytest.raises(ConfigError, match="either a retriever or retrieval_corpus"):
        run_eval(both, tmp_path / "run2", bundle=bundle, samples=[sample], progress=False, retriever=retriever)
