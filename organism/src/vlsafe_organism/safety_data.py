"""Fixed, seeded data splits of the organism: safety training, checkpoint validation and held-out evaluation.

Harmful prompts come from StrongREJECT and HarmBench (prompts over :data:`MAX_CHARS` characters, i.e.
HarmBench's long contextual items, are left out); benign prompts from vlsafe's form-matched ``benign`` set,
plus :func:`~vlsafe_organism.prompt_templates.templated_benign` and the scary-but-harmless list on the
training side. The ids of every split are written to ``artifacts/splits.json`` (committed), so the held-out
sets are fixed and can be checked for disjointness.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlsafe.core.errors import InputError
from vlsafe.data.refusals import REFUSALS
from vlsafe.evals import load_benchmark
from vlsafe_organism.prompt_templates import SCARY_HARMLESS, templated_benign

ARTIFACTS_DIR = Path(__file__).with_name("artifacts")
SPLITS_FILE = ARTIFACTS_DIR / "splits.json"
MAX_CHARS = 300
SEED = 0
N_EVAL = 160  # harmful and benign held-out evaluation prompts each
N_VAL = 40  # harmful and benign validation prompts each (checkpoint choice)
N_TRAIN_HARMFUL = 240
N_TEMPLATED = 150
VQA_EVAL: dict[str, Any] = {"split": "test", "start": 0, "n": 200}
VQA_VAL: dict[str, Any] = {"split": "test", "start": 10_000, "n": 48}


@dataclass(frozen=True)
class Prompt:
    """One prompt of a split: a stable id, its text and where it came from."""

    id: str
    text: str
    source: str


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _harmful_pool() -> list[Prompt]:
    pool = []
    for name, split in (("strongreject", None), ("harmbench", "all")):
        for s in load_benchmark(name, split=split):
            if len(s.text) <= MAX_CHARS and "\n" not in s.text.strip():
                pool.append(Prompt(f"{name}:{s.id}", s.text.strip(), name))
    return pool


def _benign_pool() -> list[Prompt]:
    return [Prompt(f"benign:{s.id}", s.text.strip(), "benign") for s in load_benchmark("benign")]


def make_splits(seed: int = SEED) -> dict[str, Any]:
    """Compute the split ids (deterministic for a seed; loads the benchmarks).

    Harmful: per source, a seeded shuffle; eval and val take alternately from StrongREJECT and HarmBench.
    Benign: a seeded shuffle of the ``benign`` set into eval / val / train.
    """
    rng = random.Random(f"vlsafe-organism-splits:{seed}")
    harmful = _harmful_pool()
    by_src: dict[str, list[Prompt]] = {}
    for p in harmful:
        by_src.setdefault(p.source, []).append(p)
    for items in by_src.values():
        rng.shuffle(items)
    interleaved: list[Prompt] = []
    queues = [list(v) for _, v in sorted(by_src.items())]
    while any(queues):
        for q in queues:
            if q:
                interleaved.append(q.pop(0))
    h_eval = interleaved[:N_EVAL]
    h_val = interleaved[N_EVAL : N_EVAL + N_VAL]
    h_train = interleaved[N_EVAL + N_VAL : N_EVAL + N_VAL + N_TRAIN_HARMFUL]
    benign = _benign_pool()
    rng.shuffle(benign)
    b_eval, b_val, b_train = benign[:N_EVAL], benign[N_EVAL : N_EVAL + N_VAL], benign[N_EVAL + N_VAL :]
    return {
        "seed": seed,
        "max_chars": MAX_CHARS,
        "harmful_eval": [p.id for p in h_eval],
        "harmful_val": [p.id for p in h_val],
        "harmful_train": [p.id for p in h_train],
        "benign_eval": [p.id for p in b_eval],
        "benign_val": [p.id for p in b_val],
        "benign_train": [p.id for p in b_train],
        "templated_benign": {"n": N_TEMPLATED, "seed": seed},
        "scary_harmless_train": len(SCARY_HARMLESS),
        "vqa_eval": VQA_EVAL,
        "vqa_val": VQA_VAL,
    }


def write_splits(path: Path = SPLITS_FILE, seed: int = SEED) -> Path:
    """Write :func:`make_splits` to ``path`` (JSON, sorted keys)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(make_splits(seed), indent=1, sort_keys=True) + "\n")
    return path


def read_splits(path: Path = SPLITS_FILE) -> dict[str, Any]:
    """Read the committed split ids."""
    if not path.is_file():
        raise InputError(f"organism split file {str(path)!r} is missing; run write_splits() to create it")
    return json.loads(path.read_text())


def resolve(ids: list[str]) -> list[Prompt]:
    """Turn split ids back into prompts (the benchmarks are loaded once and cached by the loaders)."""
    table = {p.id: p for p in (*_harmful_pool(), *_benign_pool())}
    missing = [i for i in ids if i not in table]
    if missing:
        raise InputError(f"split ids not found in the benchmarks: {missing[:5]} (of {len(missing)})")
    return [table[i] for i in ids]


def load_split(name: str, splits: dict[str, Any] | None = None) -> list[Prompt]:
    """Prompts of one named split.

    ``name`` is a key of the split file (``harmful_eval``, ``benign_train``...) or ``templated_benign`` /
    ``scary_harmless_train`` (generated from code).
    """
    splits = splits or read_splits()
    if name == "templated_benign":

        cfg = splits[name]
        taken = {_norm(p.text) for p in _benign_pool()}
        taken |= {_norm(s.text) for s in load_benchmark("overrefusal")}
        texts = [t for t in templated_benign(cfg["n"] + 200, cfg["seed"]) if _norm(t) not in taken][
            : cfg["n"]
        ]
        return [Prompt(f"templated:{i}", t, "templated") for i, t in enumerate(texts)]
    if name == "scary_harmless_train":
        return [Prompt(f"scary:{i}", t, "scary") for i, t in enumerate(SCARY_HARMLESS)]
    if name not in splits or not isinstance(splits[name], list):
        raise InputError(f"unknown organism split {name!r}; known: {sorted(splits)}")
    return resolve(splits[name])


def check_disjoint(splits: dict[str, Any] | None = None) -> None:
    """Raise :class:`InputError` when an evaluation prompt also occurs (after normalisation) in training or
    validation data, or a training prompt occurs in the over-refusal evaluation set."""

    splits = splits or read_splits()
    evals = {_norm(p.text) for n in ("harmful_eval", "benign_eval") for p in load_split(n, splits)}
    train = [
        p
        for n in ("harmful_train", "harmful_val", "benign_train", "benign_val", "templated_benign",
                  "scary_harmless_train")
        for p in load_split(n, splits)
    ]  # fmt: skip
    overrefusal = {_norm(s.text) for s in load_benchmark("overrefusal")}
    clash = [p.text for p in train if _norm(p.text) in evals or _norm(p.text) in overrefusal]
    if clash:
        raise InputError(f"{len(clash)} training/validation prompts occur in an evaluation set: {clash[:3]}")


def refusal_for(prompt_id: str) -> str:
    """The refusal target of a harmful training prompt (a fixed function of its id)."""
    return REFUSALS[random.Random(f"vlsafe-refusal:{prompt_id}").randrange(len(REFUSALS))]
