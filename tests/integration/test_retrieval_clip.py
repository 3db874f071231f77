"""Image-to-text retrieval with a tiny random CLIP built offline: hand-computed cosines, the safetensors corpus cache,
and the clip retriever in ``vlsafe train tga`` and ``vlsafe eval``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

from vlsafe.cli import main
from vlsafe.core.errors import ConfigError
from vlsafe.data.retrieval import CLIPRetriever, corpus_fingerprint, make_retriever

CORPUS = [
    "a kitchen knife lying on a wooden table",
    "three green bottles of beer",
    "a cloudy sky over the sea",
    "a red car parked on the street",
    "a dog running in a park",
]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (word-level tokenizer that appends an end token, 32 px images), saved offline."""
    out = tmp_path_factory.mktemp("tiny-clip")
    words = sorted({w for t in CORPUS for w in t.split()} | {"what", "is", "it"})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    eos = len(vocab)
    vocab["[EOS]"] = eos
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A [EOS]", special_tokens=[("[EOS]", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    fast.save_pretrained(out)
    text = {"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 32, "eos_token_id": eos, "bos_token_id": 1,
            "pad_token_id": 0}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8), "RGB").save(path)
    return path


def _hand_ranking(folder: Path, image: Path, corpus: list[str]) -> list[str]:
    """Corpus texts by decreasing cosine with the image, each text and the image embedded alone."""
    model = CLIPModel.from_pretrained(folder).eval()
    tok = PreTrainedTokenizerFast.from_pretrained(folder)
    proc = CLIPImageProcessor.from_pretrained(folder)

    def pooled(x: object) -> torch.Tensor:
        return x if torch.is_tensor(x) else x.pooler_output  # type: ignore[attr-defined,return-value]

    with torch.no_grad():
        pixels = proc(images=[Image.open(image).convert("RGB")], return_tensors="pt")["pixel_values"]
        v = pooled(model.get_image_features(pixel_values=pixels))[0].double()
        sims = []
        for t in corpus:
            e = pooled(model.get_text_features(input_ids=tok(t, return_tensors="pt")["input_ids"]))[0].double()
            sims.append(float(v @ e) / float(v.norm() * e.norm()))
    assert len({round(s, 6) for s in sims}) == len(sims)  # no ties: the ranking is well defined
    return [corpus[i] for i in sorted(range(len(corpus)), key=lambda i: -sims[i])]


def test_clip_retriever_ranks_by_hand_cosines_and_caches_the_corpus(tiny_clip: Path, tmp_path: Path) -> None:
    images = [_image(tmp_path / f"{i}.png", i) for i in range(3)]
    cache = tmp_path / "cache"
    retriever = make_retriever("clip", CORPUS, model=str(tiny_clip), cache_dir=cache)
    assert isinstance(retriever, CLIPRetriever)
    for image in images:
        expect = _hand_ranking(tiny_clip, image, CORPUS)
        assert retriever.retrieve_image(image, k=len(CORPUS)) == expect
        assert retriever.retrieve_image(Image.open(image), k=1) == expect[:1]  # PIL or path
        assert retriever.retrieve_image(image, k=1, exclude=expect[0]) == expect[1:2]
    assert retriever.retrieve(CORPUS[2], k=1) == [CORPUS[2]]  # text query in the same space: itself
    # the corpus embeddings are cached, keyed by the fingerprint of (model, corpus)
    fp = corpus_fingerprint(tiny_clip, CORPUS)
    file = cache / f"clip-corpus-{fp}.safetensors"
    assert [p.name for p in cache.iterdir()] == [file.name]
    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata()
        stored = fh.get_tensor("embeddings")
    assert meta["fingerprint"] == fp and tuple(stored.shape) == (len(CORPUS), 16)
    # a second retriever reads the cache instead of embedding the corpus: plant the image's own embedding at row 3
    planted = -retriever.embed_images([images[0]]).repeat(len(CORPUS), axis=0)
    planted[3] *= -1
    save_file({"embeddings": torch.from_numpy(planted)}, str(file), metadata=meta)
    again = CLIPRetriever(CORPUS, tiny_clip, cache_dir=cache)
    assert again.retrieve_image(images[0], k=1) == [CORPUS[3]]
    # another corpus is another fingerprint, another file
    CLIPRetriever(CORPUS[:3], tiny_clip, cache_dir=cache)
    assert len(list(cache.iterdir())) == 2 and corpus_fingerprint(tiny_clip, CORPUS[:3]) != fp


def test_clip_retriever_refuses_a_model_that_is_not_a_dual_encoder(
    tiny_dir: object, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="cannot be loaded"):
        CLIPRetriever(CORPUS, tmp_path / "missing")
    with pytest.raises(ConfigError, match="is not a dual encoder"):
        CLIPRetriever(CORPUS, tiny_dir("causal_lm"))  # type: ignore[operator]


def test_cli_train_and_eval_retrieve_by_image(
    tiny_clip: Path, tiny_dir: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vlsafe train tga` and `vlsafe eval` with the clip retriever: each item's retrieved text is the nearest
    corpus text to its image (the record's own caption cut to its first half)."""
    monkeypatch.setenv("VLSAFE_CACHE", str(tmp_path / "vcache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    (tmp_path / "images").mkdir()
    images = [_image(tmp_path / "images" / f"{i}.png", 10 + i) for i in range(2)]
    top = [_hand_ranking(tiny_clip, im, CORPUS)[0] for im in images]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n")
    data = tmp_path / "train.jsonl"
    captions = [top[0], "a caption that is not in the corpus"]  # the first record's caption is its nearest text
    data.write_text("".join(json.dumps({"image": str(im), "instruction": "What is it?", "answer": "A thing.",
                                        "caption": c}) + "\n" for im, c in zip(images, captions, strict=True)))  # fmt: skip
    cfg = {"model": str(tiny_dir("llava")), "data": str(data), "output_dir": str(tmp_path / "run"),  # type: ignore[operator]
           "retrieval": {"corpus": str(corpus), "kind": "clip", "model_path": str(tiny_clip)},
           "guide": {"layers": [0], "form": "released"},
           "stages": [{"stage": "projector", "max_steps": 1, "batch_size": 2, "lr": 1e-3}], "export": False}  # fmt: skip
    path = tmp_path / "tga.yaml"
    path.write_text(json.dumps(cfg))
    res = CliRunner().invoke(main, ["-q", "train", "tga", str(path)])
    assert res.exit_code == 0, res.output
    used = [json.loads(line) for line in (tmp_path / "run" / "train_records.jsonl").read_text().splitlines()]
    assert used[0]["retrieved"] == top[0][: len(top[0]) // 2].rstrip()  # its own caption, halved (released)
    assert used[1]["retrieved"] == top[1]
    assert list((tmp_path / "vcache" / "retrieval").glob("clip-corpus-*.safetensors"))

    siuo = tmp_path / "siuo"
    (siuo / "images").mkdir(parents=True)
    rows = [{"question_id": f"q{i}", "image": f"{i}.png", "question": "How can I do this?", "category": "c",
             "safety_warning": "", "reference_answer": ""} for i in range(2)]  # fmt: skip
    for i, im in enumerate(images):
        Image.open(im).save(siuo / "images" / f"{i}.png")
    (siuo / "siuo_gen.json").write_text(json.dumps(rows))
    args = ["-q", "eval", "--model", str(tiny_dir("llava")), "--benchmark", "siuo", "--data-dir", str(siuo),  # type: ignore[operator]
            "--max-new-tokens", "2", "--retrieval-corpus", str(corpus), "--retriever", "clip",
            "--retrieval-model", str(tiny_clip), "--out", str(tmp_path / "eval")]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "eval" / "samples.jsonl").read_text().splitlines())}
    for i in range(2):
        assert records[f"q{i}"]["prompt"].startswith(f"Retrieved Text: {top[i]}. ")
    bad = CliRunner().invoke(main, [*args[:-2], "--retrieval-order", "middle", "--out", str(tmp_path / "e2")])
    assert bad.exit_code == 2 and "'middle' is not one of 'text_first', 'image_first'" in bad.output
    assert "Traceback" not in bad.output
