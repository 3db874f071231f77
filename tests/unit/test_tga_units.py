"""Unit tests of TGA pieces that need no model: retrieval, prompt spans, data reading, loss terms, checkpoints."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.retrieval import BM25Retriever, load_corpus, retrieval_prompt, retrieval_spans
from vlsafe.methods.training import (
    TGAConfig,
    TGALoss,
    TGARecord,
    guide_terms,
    load_checkpoint,
    masked_mean,
    middle_third,
    read_tga_records,
    save_checkpoint,
)
from vlsafe.methods.training.checkpoint import latest_checkpoint
from vlsafe.methods.training.tga import attach_retrieved, load_tga_config
from vlsafe.methods.training.trainer import TrainConfig, _lr_lambda
from vlsafe.models.inputs import IMAGE_SLOT


def test_retrieval_prompt_format_and_spans() -> None:
    for order, shown in (("image_first", ""), ("text_first", IMAGE_SLOT)):
        text, (rs, re_), (is_, ie) = retrieval_spans("  What is this? ", "A knife on a table.", order)
        assert text == f"Retrieved Text: A knife on a table. {shown}What is this?"
        assert text[rs:re_] == "A knife on a table"
        assert text[is_:ie] == "What is this?"
    assert retrieval_prompt("What?", "r") == f"Retrieved Text: r. {IMAGE_SLOT}What?"  # the default: released
    assert retrieval_prompt("Hi", None) == "Hi"
    assert retrieval_prompt("Hi", "   ") == "Hi"
    assert retrieval_spans("Hi", None)[1] == (0, 0)
    with pytest.raises(InputError, match="instruction is empty"):
        retrieval_prompt("  ", "x")


def _bm25_oracle(corpus: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    docs = [d.lower().split() for d in corpus]
    avg = sum(map(len, docs)) / len(docs)
    out = []
    for d in docs:
        s = 0.0
        for t in query.lower().split():
            df = sum(t in x for x in docs)
            tf = d.count(t)
            if tf:
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def test_bm25_matches_formula_and_ranks() -> None:
    corpus = ["a red knife on a table", "a glass of beer", "red red apple", "a gun and a knife"]
    r = BM25Retriever(corpus)
    assert r.scores("red knife") == pytest.approx(_bm25_oracle(corpus, "red knife"), abs=1e-12)
    assert r.retrieve("beer glass", k=1) == ["a glass of beer"]
    assert r.retrieve("knife", k=2) == ["a gun and a knife", "a red knife on a table"]
    assert r.retrieve("knife", k=1, exclude="a gun  and a knife") == ["a red knife on a table"]
    with pytest.raises(InputError):
        BM25Retriever([])


def test_load_corpus_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("one\n\n two \n")
    assert load_corpus(tmp_path / "c.txt") == ["one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": "a"}\n{"caption": "b"}\n')
    assert load_corpus(tmp_path / "c.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"nope": 1}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        load_corpus(tmp_path / "bad.jsonl")


def test_read_tga_records_names_file_and_line(tmp_path: Path) -> None:
    good = {"instruction": "q", "answer": "a", "caption": "c"}
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answer": " "}) + "\n")
    with pytest.raises(InputError, match=r"d.jsonl:2: answer: .*non-empty"):
        read_tga_records(f)
    f.write_text(json.dumps(good) + "\n{broken\n")
    with pytest.raises(InputError, match=r"d.jsonl:2: not valid JSON"):
        read_tga_records(f)
    f.write_text(json.dumps({**good, "extra": 1}) + "\n")
    with pytest.raises(InputError, match=r"d.jsonl:1: extra"):
        read_tga_records(f)
    f.write_text("\n" + json.dumps({**good, "image": "missing.png"}) + "\n")
    with pytest.raises(InputError, match=r"d.jsonl:2: image .*missing.png not found"):
        read_tga_records(f)
    f.write_text("\n")
    with pytest.raises(InputError, match=r"training data .*d.jsonl holds no records"):
        read_tga_records(f)
    with pytest.raises(InputError, match=r"training data '.*nope.jsonl' does not exist"):
        read_tga_records(tmp_path / "nope.jsonl")


def test_attach_retrieved_queries_and_excludes_own_caption() -> None:
    corpus = ["a red square", "a red circle near a square", "blue sky"]
    recs = [
        TGARecord(instruction="q", answer="a", caption="a red square"),
        TGARecord(instruction="q", answer="a", caption="blue sky", retrieved="kept"),
    ]
    out = attach_retrieved(recs, BM25Retriever(corpus), query="caption", exclude_self=True)
    assert out[0].retrieved == "a red circle near a square"
    assert out[1].retrieved == "kept"
    assert recs[0].retrieved is None  # copies, not mutation


def test_masked_mean_and_guide_terms_exact() -> None:
    h = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    mean = masked_mean(h, mask)
    assert torch.equal(mean[0], (h[0, 0] + h[0, 2]) / 2)
    assert torch.equal(mean[1], torch.zeros(4, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    i, c, r = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    has = torch.tensor([True, False, True])
    term, cic, crc = guide_terms(i, c, r, has)
    cos_ic = F.cosine_similarity(i, c, dim=-1)
    cos_rc = F.cosine_similarity(r, c, dim=-1)
    expect = (-cos_ic + torch.log1p(torch.exp(cos_rc - cos_ic)) * has).mean()
    assert float(term) == pytest.approx(float(expect), abs=1e-6)
    assert float(cic) == pytest.approx(float(cos_ic.mean()), abs=1e-6)
    assert float(crc) == pytest.approx(float(cos_rc[[0, 2]].mean()), abs=1e-6)


def test_guide_terms_carry_gradient() -> None:
    i = torch.randn(2, 6, requires_grad=True)
    c, r = torch.randn(2, 6), torch.randn(2, 6)
    term, _, _ = guide_terms(i, c, r, torch.tensor([True, True]))
    term.backward()
    assert i.grad is not None and float(i.grad.abs().sum()) > 0


def test_middle_third_and_lambda_schedule() -> None:
    assert middle_third(2) == [0]
    assert middle_third(30) == list(range(10, 20))
    assert middle_third(32) == list(range(10, 21))

    class _B:
        num_layers = 4

        def check_layer(self, j: int) -> int:
            return j

    loss = TGALoss(_B(), [1, 2], weight=2.0, schedule="linear", max_steps=10)  # type: ignore[arg-type]
    assert [loss.lam(s) for s in (0, 5, 10)] == [2.0, 1.0, 0.0]
    assert TGALoss(_B(), [1], weight=0.5).lam(7) == 0.5  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TGALoss(_B(), [], weight=1.0)  # type: ignore[arg-type]


def test_lr_schedules() -> None:
    cfg = TrainConfig(output_dir=Path("x"), max_steps=10, warmup_steps=2, schedule="linear")
    f = _lr_lambda(cfg)
    assert [f(0), f(1), f(2), f(6), f(10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    cos = _lr_lambda(TrainConfig(output_dir=Path("x"), max_steps=4, schedule="cosine"))
    assert [cos(0), cos(2), cos(4)] == pytest.approx([1.0, 0.5, 0.0])


def test_tga_config_validation(tmp_path: Path) -> None:
    base = {"model": "m", "data": "d.jsonl", "output_dir": str(tmp_path)}
    cfg = TGAConfig.model_validate({**base, "stages": [{"stage": "projector", "max_steps": 3}]})
    assert cfg.stage_configs()[0].output_dir == tmp_path / "stage0-projector"
    with pytest.raises(ValueError, match="stage 0: .*max_steps"):
        TGAConfig.model_validate({**base, "stages": [{"stage": "projector", "max_steps": 0}]})
    with pytest.raises(ValueError, match="stage 0: .*nope"):
        TGAConfig.model_validate({**base, "stages": [{"nope": 1}]})
    (tmp_path / "c.yaml").write_text("model: m\ndata: d.jsonl\noutput_dir: o\nguide: {weight: -1}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: guide.weight"):
        load_tga_config(tmp_path / "c.yaml")


def test_checkpoint_roundtrip_restores_optimizer_scheduler_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    model[0].weight.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=0.1, betas=(0.8, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        opt.step()
        sched.step()
    save_checkpoint(tmp_path / "checkpoint-3", model, opt, sched, step=3, extra={"k": 1})
    expect_rng = (torch.rand(3), random.random(), np.random.rand())
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    # scramble everything, then restore
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    opt2 = torch.optim.AdamW(params, lr=0.1, betas=(0.8, 0.9))
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    state = load_checkpoint(tmp_path / "checkpoint-3", model, opt2, sched2)
    assert state["step"] == 3 and state["extra"] == {"k": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(v, snapshot[k])
    assert (torch.rand(3).tolist(), random.random(), np.random.rand()) == (
        expect_rng[0].tolist(),
        expect_rng[1],
        expect_rng[2],
    )
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    for a, b in zip(opt.state.values(), opt2.state.values(), strict=True):
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert opt2.param_groups[0]["betas"][0] == 0.8
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
    with pytest.raises(InputError, match="not a complete"):
        load_checkpoint(tmp_path / "missing", model)


def test_organism_tga_data_and_recipe(tmp_path: Path) -> None:
    from vlsafe.methods.training import read_tga_records
    from vlsafe_organism.tga import organism_tga_config, write_organism_tga_data
    from vlsafe_organism.vl_train import VLConfig

    data, corpus = write_organism_tga_data(tmp_path, n_images=2)
    records = read_tga_records(data)
    assert len(records) >= 2 and all(Path(r.image or "").is_file() for r in records)
    captions = corpus.read_text().splitlines()
    assert {r.caption for r in records} == set(captions)
    cfg = organism_tga_config(tmp_path / "run", tmp_path / "base", data, corpus)
    vl = VLConfig()
    first, second = cfg.stage_configs()
    assert (first.stage, first.max_steps, first.lr) == ("projector", vl.proj_steps, vl.proj_lr)
    assert (second.stage, second.max_steps, second.lr) == ("projector_lora", vl.vl_steps, vl.vl_lr)
    assert second.lora is not None and second.lora.rank == vl.rank


def test_organism_tga_starts_from_the_artifacts_safe_llm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TGA wires the ``safe-llm`` system of the given artefact directory (the one the plain ``vl`` artefact
    was adapted from) with the recipe's image size and vision layer, in the given cache: it does not train
    a safe LLM of its own."""
    import vlsafe_organism.build as build_mod
    import vlsafe_organism.tga as tga_organism
    from vlsafe_organism.recipe import load_recipe

    calls: dict[str, object] = {}

    class _Model:
        def cpu(self) -> _Model:
            return self

    def _no_training(*_a: object, **_k: object) -> None:
        raise AssertionError("TGA must not build a safe LLM of its own")

    def _save(model: object, processor: object, path: Path) -> None:
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")
        calls["saved"] = (model, processor)

    monkeypatch.setattr(build_mod, "build_safe_llm", _no_training)
    monkeypatch.setattr(
        tga_organism, "build_system", lambda name, cache, art: (calls.setdefault("system", (name, cache, art)), "tok")
    )
    monkeypatch.setattr(tga_organism, "load_base_vision", lambda cache: ("vision", cache))
    monkeypatch.setattr(
        tga_organism,
        "wire_llava",
        lambda vision, llm, tok, **kw: calls.setdefault("wired", (vision, kw)) and (_Model(), "proc"),
    )
    monkeypatch.setattr(tga_organism, "save_vlm", _save)
    monkeypatch.setattr(tga_organism, "write_organism_tga_data", lambda *a, **k: (tmp_path / "d", tmp_path / "c"))
    monkeypatch.setattr(tga_organism, "organism_tga_config", lambda *a, **k: a)
    monkeypatch.setattr(tga_organism, "run_tga", lambda cfg, progress: {"config": cfg})

    recipe = load_recipe({"vl": {"size": 56, "feature_layer": 5}})
    summary = tga_organism.run_tga_organism(tmp_path / "run", "CACHE", progress=False, recipe=recipe, art_dir="ART")
    assert calls["system"] == ("safe-llm", "CACHE", "ART")
    assert calls["wired"] == (("vision", "CACHE"), {"size": 56, "feature_layer": 5})
    assert summary["config"][1] == tmp_path / "run" / "base_vlm"
    assert (tmp_path / "run" / "base_vlm" / "config.json").is_file()
