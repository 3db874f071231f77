"""Image-to-text retrieval without a model: the generic embedding index (text- and image-keyed), the released
own-caption rule, attach_retrieved by image, and the error paths of orders, queries and forms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlsafe.core.config import validate_config
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.retrieval import (
    BM25Retriever,
    EmbeddingIndex,
    ImageRetriever,
    check_order,
    cosine_top,
    halve_own_caption,
    retrieval_spans,
)
from vlsafe.evals.config import EvalConfig
from vlsafe.evals.retrieval import retriever_fingerprint, with_retrieval
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.methods.training import TGARecord
from vlsafe.methods.training.tga import TGAConfig, attach_retrieved
from vlsafe.models.inputs import IMAGE_SLOT, UserTurnLayout


def _planted(n: int = 6, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(n, dim))
    return keys, [f"text {i}" for i in range(n)]


def test_embedding_index_returns_the_planted_nearest_texts() -> None:
    keys, texts = _planted()
    # an "image" is its id; its embedding is key 3 plus a little noise, so text 3 is nearest
    rng = np.random.default_rng(1)
    table = {"img-3": keys[3] + 0.01 * rng.normal(size=keys.shape[1]), "img-5": 2.0 * keys[5]}
    calls: list[list[Any]] = []

    def embed(images: list[Any]) -> np.ndarray:
        calls.append(images)
        return np.stack([table[im] for im in images])

    index = EmbeddingIndex(keys, texts, embed_image=embed)
    assert isinstance(index, ImageRetriever)
    assert index.retrieve_image("img-3") == ["text 3"]
    assert index.retrieve_image("img-5", k=1) == ["text 5"]  # cosine: the scale does not matter
    # k > 1: the order of the brute-force cosines
    q = table["img-3"]
    sims = [float(k @ q / np.linalg.norm(k) / np.linalg.norm(q)) for k in keys]
    expect = [texts[i] for i in sorted(range(len(sims)), key=lambda i: -sims[i])]
    assert index.retrieve_image("img-3", k=len(texts)) == expect
    assert index.retrieve_image("img-3", k=2, exclude="text  3") == expect[1:3]
    assert calls[0] == ["img-3"]
    with pytest.raises(ConfigError, match="retrieves by image only"):
        index.retrieve("a query")


def test_image_keyed_index_returns_each_caption_once() -> None:
    """Retrieval by nearest training images: keys are image features, each returning its caption (repeated)."""
    keys = np.array([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    captions = ["a red square", "a red square", "a blue circle", "a green star"]
    index = EmbeddingIndex(keys, captions, embed_image=lambda ims: np.array([[1.0, 0.05, 0.0] for _ in ims]))
    assert index.retrieve_image("x", k=3) == ["a red square", "a blue circle", "a green star"]
    assert index.retrieve_image("x", k=1, exclude="a red square") == ["a blue circle"]


def test_cosine_ties_go_to_the_lower_index_and_bad_keys_fail() -> None:
    keys = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert cosine_top(np.array([1.0, 0.0]), keys).tolist() == [0, 1, 2]
    with pytest.raises(InputError, match="2 texts for 3 retrieval keys"):
        EmbeddingIndex(keys, ["a", "b"])
    with pytest.raises(InputError, match="non-empty"):
        EmbeddingIndex(np.zeros((0, 2)), [])
    with pytest.raises(ConfigError, match="no image encoder"):
        EmbeddingIndex(keys, ["a", "b", "c"], embed_text=lambda t: keys[:1]).retrieve_image("x")


def test_released_own_caption_rule() -> None:
    caption = "a kitchen knife lying on a wooden table"
    assert halve_own_caption(caption, caption) == caption[: len(caption) // 2].rstrip()
    assert halve_own_caption(" a kitchen  knife lying on a wooden table ", caption) == "a kitchen knife lyi"  # 39 // 2
    assert halve_own_caption("another text", caption) == "another text"
    assert halve_own_caption(None, caption) is None


def test_attach_retrieved_by_image_halves_the_own_caption() -> None:
    keys = np.eye(3)
    corpus = ["a red square on white", "a blue circle", "a green star"]
    table = {"a.png": keys[0], "b.png": keys[2]}
    index = EmbeddingIndex(keys, corpus, embed_image=lambda ims: np.stack([table[i] for i in ims]))
    recs = [
        TGARecord(instruction="q", answer="a", caption="a red square on white", image="a.png"),
        TGARecord(instruction="q", answer="a", caption="a blue circle", image="b.png"),
    ]
    out = attach_retrieved(recs, index, query="image")
    assert out[0].retrieved == "a red squa"  # its own caption, cut to its first half (released)
    assert out[1].retrieved == "a green star"
    excluded = attach_retrieved(recs, index, query="image", exclude_self=True)
    assert excluded[0].retrieved == "a blue circle"  # the next nearest (a tie: the lower index)
    with pytest.raises(ConfigError, match="retrieval query 'image' needs a retriever that retrieves by image"):
        attach_retrieved(recs, BM25Retriever(corpus), query="image")
    with pytest.raises(ConfigError, match="retrieval query 'pixels' is unknown"):
        attach_retrieved(recs, index, query="pixels")
    with pytest.raises(InputError, match="has no image"):
        attach_retrieved([TGARecord(instruction="q", answer="a", caption="c")], index, query="image")


def test_eval_samples_retrieve_by_their_image() -> None:
    keys = np.eye(2)
    index = EmbeddingIndex(keys, ["knives cut", "beer bottles"], embed_image=lambda ims: np.stack(ims),
                           embed_text=lambda ts: np.stack([keys[0] for _ in ts]))  # fmt: skip
    samples = [Sample(id=str(i), benchmark="x", text="What is it?", kind=SampleKind.HARMFUL) for i in range(2)]
    out = with_retrieval(samples, index, query="image", images=[keys[1], None])
    assert [s.metadata["retrieved"] for s in out] == ["beer bottles", "knives cut"]  # no image: by text
    with pytest.raises(ConfigError, match="query 'image' needs a retriever"):
        with_retrieval(samples, BM25Retriever(["a"]), query="image")
    with pytest.raises(ConfigError, match="retrieval query 'vision' is unknown"):
        with_retrieval(samples, index, query="vision")


def test_bad_orders_and_forms_name_the_value_and_the_rule(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"retrieval_order 'middle' is unknown; it must be one of text_first, image_first"):
        check_order("middle")
    with pytest.raises(ConfigError, match="'middle' is unknown"):
        retrieval_spans("q", "r", "middle")
    base = {"model": "m", "data": "d.jsonl", "output_dir": str(tmp_path)}
    cases = [
        ({"guide": {"form": "exp"}}, r"guide.form: .*'exp' is unknown; it must be one of paper, released, released-no-grad"),
        ({"retrieval": {"order": "last"}}, r"retrieval.order: .*'last' is unknown; it must be one of text_first, image_first"),
        ({"retrieval": {"query": "image"}}, r"query 'image' needs kind 'clip'"),
        ({"retrieval": {"corpus": "c.txt", "kind": "clip"}}, r"kind 'clip' needs model_path"),
    ]  # fmt: skip
    for extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            validate_config(TGAConfig, {**base, **extra}, what="tga.yaml")
    with pytest.raises(ConfigError, match=r"retrieval_order: .*'last' is unknown"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "retrieval_order": "last"})
    with pytest.raises(ConfigError, match=r"retriever 'clip' needs retrieval_model"):
        EvalConfig.from_dict({"model": "m", "benchmark": "b", "retrieval_corpus": "c.txt", "retriever": "clip"})
    cfg = validate_config(TGAConfig, {**base, "retrieval": {"corpus": "c.txt", "kind": "clip", "model_path": "m"}})
    assert cfg.retrieval.query_by == "image" and cfg.retrieval.order == "text_first"
    assert cfg.guide.form == "paper" and not cfg.retrieval.exclude_self


def test_user_turn_layout_places_the_image_at_the_slot() -> None:
    image = UserTurnLayout("USER: <image>\n", " ASSISTANT:", "USER: ", "<image>\n", "")
    text = UserTurnLayout("USER: ", " ASSISTANT:")
    user, (rs, re_), (qs, qe) = retrieval_spans("What is it?", "a knife")
    shown = image.render(user)
    assert shown.text == "USER: Retrieved Text: a knife. <image>\nWhat is it? ASSISTANT:"  # the released prompt
    assert shown.text[slice(*shown.span(rs, re_))] == "a knife"
    assert shown.text[slice(*shown.span(qs, qe))] == "What is it?"
    assert [shown.text[a:b] for a, b in shown.spans] == ["Retrieved Text: a knife. ", "What is it?"]
    plain = text.render(user)
    assert plain.text == "USER: Retrieved Text: a knife. What is it? ASSISTANT:"  # no image: the slot is dropped
    assert plain.text[slice(*plain.span(qs, qe))] == "What is it?"
    first = image.render(retrieval_spans("What is it?", "a knife", "image_first")[0])
    assert first.text == "USER: <image>\nRetrieved Text: a knife. What is it? ASSISTANT:"
    with pytest.raises(InputError, match="crosses the image"):
        shown.span(rs, qe)
    with pytest.raises(InputError, match="at most once"):
        image.render(f"{IMAGE_SLOT}a{IMAGE_SLOT}")


def test_retriever_fingerprint_follows_the_index_content() -> None:
    a, same = EmbeddingIndex(np.eye(2), ["x", "y"]), EmbeddingIndex(np.eye(2), ["x", "y"])
    moved, renamed = EmbeddingIndex(np.eye(2) * 2, ["x", "y"]), EmbeddingIndex(np.eye(2), ["x", "z"])
    assert retriever_fingerprint(a) == retriever_fingerprint(same) == f"vlsafe.data.retrieval.EmbeddingIndex:{a.digest()}"
    assert len({retriever_fingerprint(r) for r in (a, moved, renamed)}) == 3
    assert retriever_fingerprint(BM25Retriever(["a"])) == "vlsafe.data.retrieval.BM25Retriever"
