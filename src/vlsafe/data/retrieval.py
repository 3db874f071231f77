"""Retrieval for TGA: the prompt format (one function for training and inference) and retrievers.

* :func:`retrieval_prompt` writes ``"Retrieved Text: {retrieved}. {instruction}"`` and
  :func:`retrieval_spans` also returns the character spans of both parts (for the guide loss' ``R_j``);
  the TGA data encoder and :func:`vlsafe.evals.retrieval.generate_with_retrieval` both call it.
* :class:`BM25Retriever` (Okapi BM25, our own ~50 lines, no dependency) is the default retriever over a
  caption/text corpus; :class:`EmbeddingRetriever` embeds with a local transformers encoder (mean pooling,
  cosine). Both implement :class:`Retriever`; :data:`RETRIEVERS` registers them by name.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoModel, AutoTokenizer

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.core.io import iter_jsonl, read_text_file
from vlsafe.core.registry import Registry

#: The first user turn of TGA training and inference.
RETRIEVAL_FORMAT = "Retrieved Text: {retrieved}. {instruction}"
_TOKEN = re.compile(r"\w+", re.UNICODE)


def _clean_retrieved(retrieved: str) -> str:
    text = " ".join(str(retrieved).split())
    return text[:-1] if text.endswith(".") else text  # the format adds the full stop


def retrieval_spans(instruction: str, retrieved: str | None) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The user text and the character spans ``[start, end)`` of the retrieved text and of the instruction.

    With no (or empty) retrieved text the user text is the instruction alone and the retrieved span is
    ``(0, 0)``.
    """
    instruction = instruction.strip()
    if not instruction:
        raise InputError("the instruction is empty")
    if retrieved is None or not _clean_retrieved(retrieved):
        return instruction, (0, 0), (0, len(instruction))
    r = _clean_retrieved(retrieved)
    head, rest = RETRIEVAL_FORMAT.split("{retrieved}")
    middle = rest.split("{instruction}")[0]
    r_start = len(head)
    i_start = r_start + len(r) + len(middle)
    text = RETRIEVAL_FORMAT.format(retrieved=r, instruction=instruction)
    return text, (r_start, r_start + len(r)), (i_start, i_start + len(instruction))


def retrieval_prompt(instruction: str, retrieved: str | None) -> str:
    """``"Retrieved Text: {retrieved}. {instruction}"`` (the instruction alone without retrieved text)."""
    return retrieval_spans(instruction, retrieved)[0]


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


RETRIEVERS: Registry[Any] = Registry("retriever")
RETRIEVERS.register("bm25", BM25Retriever)
RETRIEVERS.register("embedding", EmbeddingRetriever)


def make_retriever(kind: str, corpus: Sequence[str], **options: Any) -> Retriever:
    """Build a registered retriever (``bm25``, ``embedding``) over ``corpus``."""
    return RETRIEVERS.get(kind)(corpus, **options)  # type: ignore[no-any-return]
