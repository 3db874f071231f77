"""Retrieval for TGA: the prompt format (one function for training and inference) and text retrievers.

* :func:`retrieval_prompt` writes the TGA user text. With ``order="text_first"`` (the released code's
  ``"Retrieved Text: {retrieved}. <image>\\n{instruction}"``) the retrieved text comes before the image: the
  text holds :data:`vlsafe.models.inputs.IMAGE_SLOT`, where :func:`vlsafe.models.build_inputs` shows the image
  (the template's placeholder, ``"<image>\\n"`` for LLaVA); with ``image_first`` the image precedes
  ``"Retrieved Text: {retrieved}. {instruction}"``. Without an image both read
  ``"Retrieved Text: {retrieved}. {instruction}"``. :func:`retrieval_spans` also returns the character spans of
  the retrieved text and the instruction (for the guide loss' ``R_j``); the TGA data encoder and
  :mod:`vlsafe.evals.retrieval` both call it.
* :func:`halve_own_caption`: the released rule for a retrieved text identical to the item's caption (cut to its
  first half).
* :class:`BM25Retriever` (Okapi BM25, our own ~50 lines, no dependency) and :class:`EmbeddingRetriever` (a local
  transformers encoder, mean pooling, cosine) retrieve by text (:class:`Retriever`).
* Image-to-text retrieval (:class:`ImageRetriever`; the paper retrieves "the texts related to input vision"):
  :class:`EmbeddingIndex` is the generic piece: any image-embedding callable (``images -> [n, D]``) and a
  precomputed key matrix ``[N, D]`` with the text each key returns. Keys may be text embeddings (a caption
  corpus in a shared image-text space) or image embeddings (training images, each returning its caption:
  retrieval by nearest training images). Cosine similarity searched with numpy; ties go to the lower key
  index; a text returned by several keys counts once. :class:`CLIPRetriever` is a CLIP-style dual encoder
  (transformers' CLIP or SigLIP, hub id or local folder, no remote code) over a caption corpus, embedded once
  and, with ``cache_dir``, cached as ``clip-corpus-<fingerprint>.safetensors`` (:func:`corpus_fingerprint` of
  model and corpus); it retrieves by image and, for prompts without an image, by text in the same space.
* :data:`RETRIEVERS` registers ``bm25``, ``embedding`` and ``clip`` by name (:func:`make_retriever`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from pydantic import BeforeValidator
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

from vlsafe.core.config import one_of
from vlsafe.core.digest import json_digest
from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import atomic_path, iter_jsonl, read_text_file
from vlsafe.core.registry import Registry
from vlsafe.models.fingerprint import directory_fingerprint
from vlsafe.models.inputs import IMAGE_SLOT

#: The user text of TGA training and inference, by where the image goes (``{image}``: the image's slot).
RETRIEVAL_FORMATS = {
    "text_first": "Retrieved Text: {retrieved}. {image}{instruction}",
    "image_first": "Retrieved Text: {retrieved}. {instruction}",
}
#: The orders of :data:`RETRIEVAL_FORMATS`; ``text_first`` is the released code's.
RETRIEVAL_ORDERS = tuple(RETRIEVAL_FORMATS)
#: A config field holding one of :data:`RETRIEVAL_ORDERS` (an unknown value is named with the known ones).
RetrievalOrder = Annotated[Literal["text_first", "image_first"], BeforeValidator(lambda v: one_of(v, RETRIEVAL_ORDERS))]
#: The text-only form (and the ``image_first`` text after the image).
RETRIEVAL_FORMAT = RETRIEVAL_FORMATS["image_first"]
_TOKEN = re.compile(r"\w+", re.UNICODE)


def retrieval_cache_dir() -> Path:
    """``$VLSAFE_CACHE/retrieval`` (``VLSAFE_CACHE`` defaults to ``~/.cache/vlsafe``): corpus embeddings."""
    return Path(os.environ.get("VLSAFE_CACHE", "~/.cache/vlsafe")).expanduser() / "retrieval"


def check_order(order: str) -> str:
    """``order`` when it is one of :data:`RETRIEVAL_ORDERS`.

    Raises:
        ConfigError: another value (named, with the known orders).
    """
    if order not in RETRIEVAL_FORMATS:
        raise ConfigError(
            f"retrieval_order {order!r} is unknown; it must be one of {', '.join(RETRIEVAL_ORDERS)}"
        )
    return order


def _clean_retrieved(retrieved: str) -> str:
    text = " ".join(str(retrieved).split())
    return text[:-1] if text.endswith(".") else text  # the format adds the full stop


def halve_own_caption(retrieved: str | None, caption: str | None) -> str | None:
    """The released rule: a retrieved text identical to the item's caption (whitespace-normalised) is cut to
    its first half (``text[: len(text) // 2]``, trailing space dropped); any other text is returned as is."""
    if retrieved is None or caption is None:
        return retrieved
    text = " ".join(retrieved.split())
    if text != " ".join(caption.split()):
        return retrieved
    return text[: len(text) // 2].rstrip() or None


def retrieval_spans(
    instruction: str, retrieved: str | None, order: str = "text_first"
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The user text and the character spans ``[start, end)`` of the retrieved text and of the instruction.

    With ``text_first`` the user text holds :data:`~vlsafe.models.inputs.IMAGE_SLOT` between the two. With no
    (or empty) retrieved text the user text is the instruction alone and the retrieved span is ``(0, 0)``.

    Raises:
        InputError: an empty instruction.
        ConfigError: an unknown ``order``.
    """
    fmt = RETRIEVAL_FORMATS[check_order(order)]
    instruction = instruction.strip()
    if not instruction:
        raise InputError("the instruction is empty")
    if retrieved is None or not _clean_retrieved(retrieved):
        return instruction, (0, 0), (0, len(instruction))
    r = _clean_retrieved(retrieved)
    fmt = fmt.replace("{image}", IMAGE_SLOT)
    head, rest = fmt.split("{retrieved}")
    middle = rest.split("{instruction}")[0]
    r_start = len(head)
    i_start = r_start + len(r) + len(middle)
    text = fmt.format(retrieved=r, instruction=instruction)
    return text, (r_start, r_start + len(r)), (i_start, i_start + len(instruction))


def retrieval_prompt(instruction: str, retrieved: str | None, order: str = "text_first") -> str:
    """The TGA user text (:func:`retrieval_spans`; the instruction alone without retrieved text)."""
    return retrieval_spans(instruction, retrieved, order)[0]


class Retriever(Protocol):
    """Returns the ``k`` corpus texts most related to ``query`` (best first), skipping ``exclude``."""

    def retrieve(self, query: str, k: int = 1, exclude: str | None = None) -> list[str]: ...


def load_corpus(path: str | Path) -> list[str]:
    """Corpus texts from a ``.txt`` file (one per line) or ``.jsonl`` (``"text"`` or ``"caption"`` field)."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"retrieval corpus {str(file)!r} does not exist")
    texts: list[str] = []
    if file.suffix == ".jsonl":
        for number, row in iter_jsonl(file, "retrieval corpus"):
            text = row.get("text", row.get("caption"))
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"{file}:{number}: needs a non-empty 'text' (or 'caption') string")
            texts.append(text.strip())
    else:
        lines = read_text_file(file, "retrieval corpus").splitlines()
        texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise InputError(f"retrieval corpus {file} is empty")
    return texts


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``)."""
    return _TOKEN.findall(text.lower())


class BM25Retriever:
    """Okapi BM25 over a text corpus: ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))``.

    Args:
        corpus: the texts.
        k1: term-frequency saturation.
        b: length normalisation.
    """

    def __init__(self, corpus: Sequence[str], k1: float = 1.5, b: float = 0.75) -> None:
        if not corpus:
            raise InputError("the BM25 corpus is empty")
        self.corpus = list(corpus)
        self.k1, self.b = k1, b
        self.docs = [Counter(tokenize(t)) for t in self.corpus]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg_len = sum(self.lengths) / len(self.docs) or 1.0
        df: Counter[str] = Counter()
        for doc in self.docs:
            df.update(doc.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1.0 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def scores(self, query: str) -> list[float]:
        """BM25 score of every corpus text for ``query``."""
        terms = tokenize(query)
        out = []
        for doc, length in zip(self.docs, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg_len)
            s = 0.0
            for t in terms:
                tf = doc.get(t, 0)
                if tf:
                    s += self.idf[t] * tf * (self.k1 + 1) / (tf + norm)
            out.append(s)
        return out

    def retrieve(self, query: str, k: int = 1, exclude: str | None = None) -> list[str]:
        scores = self.scores(query)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        skip = " ".join(exclude.split()) if exclude else None
        return [self.corpus[i] for i in order if " ".join(self.corpus[i].split()) != skip][:k]


class EmbeddingRetriever:
    """Cosine similarity of mean-pooled embeddings from a local transformers encoder (no hub access).

    Args:
        corpus: the texts.
        model_path: a local directory with an ``AutoModel`` + tokenizer (e.g. a sentence-transformers model's
            transformer folder).
        batch_size: texts per encoder call.
    """

    def __init__(self, corpus: Sequence[str], model_path: str | Path, batch_size: int = 32) -> None:
        path = Path(model_path)
        if not path.is_dir():
            raise ConfigError(f"embedding model {path} is not a local directory (the hub is not used)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True).eval()
        self.corpus, self.batch_size = list(corpus), batch_size
        self.matrix = self.embed(self.corpus)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean-pooled embeddings ``[N, D]``."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i : i + self.batch_size]), padding=True, truncation=True,
                                 return_tensors="pt")  # fmt: skip
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        return torch.cat(out)

    def retrieve(self, query: str, k: int = 1, exclude: str | None = None) -> list[str]:
        sims = (self.matrix @ self.embed([query])[0]).tolist()
        order = sorted(range(len(sims)), key=lambda i: (-sims[i], i))
        return [self.corpus[i] for i in order if self.corpus[i] != exclude][:k]


#: Format tag of the corpus-embedding cache files.
CACHE_FORMAT = "vlsafe-clip-corpus/1"


@runtime_checkable
class ImageRetriever(Protocol):
    """Returns the ``k`` texts most related to ``image`` (best first), skipping ``exclude``."""

    def retrieve_image(self, image: Any, k: int = 1, exclude: str | None = None) -> list[str]: ...


def _unit(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.maximum(norms, 1e-12)


def cosine_top(query: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Key indices by decreasing cosine similarity to ``query`` ``[D]`` (ties: lower index first)."""
    sims = _unit(keys) @ _unit(query)[0]
    return np.lexsort((np.arange(len(sims)), -sims))


def _same(a: str, b: str | None) -> bool:
    return b is not None and " ".join(a.split()) == " ".join(b.split())


class EmbeddingIndex:
    """Nearest keys by cosine similarity, each key returning a text.

    Args:
        keys: ``[N, D]`` key embeddings (text or image embeddings).
        texts: the text each key returns (``N`` entries; repeats allowed).
        embed_image: ``images -> [n, D]`` (array or tensor), in the keys' space.
        embed_text: ``texts -> [n, D]``, for :meth:`retrieve` (optional).

    Raises:
        InputError: no keys, or ``texts`` of another length than ``keys``.
    """

    def __init__(
        self,
        keys: Any,
        texts: Sequence[str],
        embed_image: Callable[[list[Any]], Any] | None = None,
        embed_text: Callable[[list[str]], Any] | None = None,
    ) -> None:
        matrix = _as_array(keys)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise InputError(f"the retrieval keys must be a non-empty [N, D] matrix; got shape {matrix.shape}")
        if len(texts) != matrix.shape[0]:
            raise InputError(f"{len(texts)} texts for {matrix.shape[0]} retrieval keys")
        self.keys, self.texts = matrix, list(texts)
        self.embed_image_fn, self.embed_text_fn = embed_image, embed_text

    def digest(self) -> str:
        """The digest of the keys (float64) and the texts (16 hex digits; the encoders are not part of it)."""
        keys = hashlib.sha256(np.ascontiguousarray(self.keys).tobytes()).hexdigest()
        return json_digest({"keys": keys, "texts": self.texts})

    def nearest(self, query: Any, k: int = 1, exclude: str | None = None) -> list[str]:
        """The ``k`` distinct texts of the keys nearest to the embedding ``query`` ``[D]``."""
        out: list[str] = []
        for i in cosine_top(_as_array(query).reshape(-1), self.keys):
            text = self.texts[int(i)]
            if text in out or _same(text, exclude):
                continue
            out.append(text)
            if len(out) == k:
                break
        return out

    def retrieve_image(self, image: Any, k: int = 1, exclude: str | None = None) -> list[str]:
        if self.embed_image_fn is None:
            raise ConfigError("this retriever has no image encoder (give embed_image)")
        return self.nearest(_as_array(self.embed_image_fn([image]))[0], k, exclude)

    def retrieve(self, query: str, k: int = 1, exclude: str | None = None) -> list[str]:
        if self.embed_text_fn is None:
            raise ConfigError("this retriever retrieves by image only (it has no text encoder)")
        return self.nearest(_as_array(self.embed_text_fn([query]))[0], k, exclude)


def _as_array(value: Any) -> np.ndarray:
    if torch.is_tensor(value):
        return np.asarray(value.detach().float().cpu().numpy(), dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def corpus_fingerprint(model: str | Path, texts: Sequence[str]) -> str:
    """A digest of (model, corpus): a local folder's file digests (config, weights, processor) or the hub id,
    and the texts in order."""
    path = Path(model)
    model_key: Any = directory_fingerprint(path)[0] if path.is_dir() else str(model)
    return json_digest({"model": model_key, "corpus": list(texts)}, length=32)


def _features(output: Any) -> torch.Tensor:
    """The projected embedding of ``get_text_features`` / ``get_image_features`` (a tensor, or the pooled
    output of the model-output object newer transformers return)."""
    return output if torch.is_tensor(output) else output.pooler_output


def _open_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(str(image))
    if not path.is_file():
        raise InputError(f"image {str(path)!r} does not exist")
    with Image.open(path) as im:
        return im.convert("RGB")


class CLIPRetriever(EmbeddingIndex):
    """Image (or text) to text retrieval over ``corpus`` with a CLIP-style dual encoder.

    Args:
        corpus: the texts.
        model: hub id or local folder of a transformers dual encoder with ``get_text_features`` and
            ``get_image_features`` (CLIP, SigLIP), its tokenizer and image processor.
        cache_dir: where the corpus embeddings are cached (``None``: not cached).
        batch_size: texts or images per encoder call.

    Raises:
        ConfigError: the model cannot be loaded, or is not a dual encoder.
    """

    def __init__(
        self,
        corpus: Sequence[str],
        model: str | Path,
        cache_dir: str | Path | None = None,
        batch_size: int = 32,
    ) -> None:
        if not corpus:
            raise InputError("the retrieval corpus is empty")
        try:
            self.encoder = AutoModel.from_pretrained(str(model), use_safetensors=True).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"retrieval model {str(model)!r} cannot be loaded: {exc}") from None
        if not (hasattr(self.encoder, "get_text_features") and hasattr(self.encoder, "get_image_features")):
            raise ConfigError(
                f"retrieval model {str(model)!r} ({type(self.encoder).__name__}) is not a dual encoder "
                "(get_text_features / get_image_features): give a CLIP or SigLIP model"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(model))
            self.image_processor = AutoImageProcessor.from_pretrained(str(model))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"retrieval model {str(model)!r} has no usable tokenizer / image processor: {exc}") from None
        self.batch_size = batch_size
        self.fingerprint = corpus_fingerprint(model, corpus)
        self.cache_file = None if cache_dir is None else Path(cache_dir) / f"clip-corpus-{self.fingerprint}.safetensors"
        keys = self._cached() if self.cache_file is not None else None
        if keys is None:
            keys = self.embed_texts(list(corpus))
            if self.cache_file is not None:
                with atomic_path(self.cache_file) as tmp:
                    save_file({"embeddings": torch.from_numpy(keys).contiguous()}, str(tmp),
                              metadata={"format": CACHE_FORMAT, "fingerprint": self.fingerprint})  # fmt: skip
        super().__init__(keys, corpus, self.embed_images, self.embed_texts)

    def _cached(self) -> np.ndarray | None:
        """The cached corpus embeddings, when the cache file is there and carries this fingerprint."""
        assert self.cache_file is not None
        if not self.cache_file.is_file():
            return None
        with safe_open(str(self.cache_file), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or meta.get("fingerprint") != self.fingerprint:
                return None
            return _as_array(fh.get_tensor("embeddings"))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings ``[n, D]``."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            out.append(_unit(_as_array(_features(self.encoder.get_text_features(**enc)))))
        return np.concatenate(out)

    @torch.no_grad()
    def embed_images(self, images: list[Any]) -> np.ndarray:
        """Unit-norm image embeddings ``[n, D]`` of images (PIL or paths)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pil = [_open_image(im) for im in images[i : i + self.batch_size]]
            pixels = self.image_processor(images=pil, return_tensors="pt")["pixel_values"]
            out.append(_unit(_as_array(_features(self.encoder.get_image_features(pixel_values=pixels)))))
        return np.concatenate(out)


RETRIEVERS: Registry[Any] = Registry("retriever")
RETRIEVERS.register("bm25", BM25Retriever)
RETRIEVERS.register("embedding", EmbeddingRetriever)
RETRIEVERS.register("clip", CLIPRetriever)


def make_retriever(kind: str, corpus: Sequence[str], **options: Any) -> Retriever:
    """Build a registered retriever (``bm25``, ``embedding``, ``clip``) over ``corpus``."""
    return RETRIEVERS.get(kind)(corpus, **options)  # type: ignore[no-any-return]
