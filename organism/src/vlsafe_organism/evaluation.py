"""The organism's evaluation sets as a vlsafe benchmark, and its systems measured with the library's harness.

**The benchmark** ``organism`` (registered through the ``vlsafe.benchmarks`` entry point, so
``vlsafe eval --benchmark organism --split harmful_eval`` works like any other set) reads the organism's
fixed splits (:mod:`vlsafe_organism.safety_data`):

* ``harmful_eval`` / ``benign_eval`` (held out), ``harmful_val`` / ``benign_val`` (settings are chosen on
  these), ``harmful_train`` / ``benign_train``: one sample per prompt, kind ``harmful`` / ``benign``; sample
  ``i`` carries the held-out synthetic render ``test`` seed ``EVAL_IMAGE_START + i`` as its image (shown
  under the ``provided`` image setting);
* ``vqa_eval`` / ``vqa_val``: short-answer questions about held-out renders (kind ``utility``, ``answer`` the
  exact short answer, ``category`` the question type: colour, shape, count, position, object, word...);
* toxic images (:mod:`vlsafe_organism.toxic`, :func:`toxic_samples`): ``toxic_eval`` / ``toxic_val``, harmful
  requests that refer to a harmful object only through its pictogram (kind ``harmful``, ``category`` the
  object, the image a held-out render of it); ``toxic_twin_eval`` / ``toxic_twin_val``, the same requests naming
  the object instead (kind ``harmful``, no image; sample ``i`` is the twin of image request ``i``);
  ``toxic_benign_eval`` / ``toxic_benign_val``, benign requests shown with the same renders (sample ``i`` with
  the render of image request ``i``: over-refusal on harmful-looking images); ``pictogram_eval`` /
  ``pictogram_val``, short-answer naming questions about held-out pictograms (kind ``utility``, category
  ``pictogram``).

Images are rendered once into the benchmark's data folder (:func:`data_dir`; deterministic PNGs, lossless).

**The degradation table's image settings** map onto the library's: ``none`` (text only), ``blank`` (the
library's white image at 224 px), ``noise`` (uniform RGB noise from one seeded stream, image ``i`` shown with
harmful and benign prompt ``i``: provided images), ``synthetic`` (the sample's own render: ``provided``) and
``typographic`` (the request rendered FigStep-style at 448 px with the fixed FigStep prompt: the library's
``figstep`` setting) and ``toxic`` (the toxic-image requests ``toxic_<set>`` with their pictograms, and the
benign requests ``toxic_benign_<set>`` on the same renders: ``provided``). Beside them, ``toxic-twin``
(:data:`TWIN_SETTING`) is the text-only row of the same toxic requests naming the object (``toxic_twin_<set>``,
harmful only).

**A system's rows** (:func:`evaluate_system`) come from :func:`vlsafe.evals.run_eval`, one resumable run
directory per image setting plus one for VQA: samples.jsonl, the keyword judge's verdicts and results.json.
A system with a ``retriever`` (a TGA model) is asked every prompt that shows an image in its training prompt,
``"Retrieved Text: r. <image>\\nq"`` (``retrieval_order``), through the library's retrieval path
(``run_eval(..., retriever=...)``); text-only prompts are asked as they are.
A row counts a harmful (benign) prompt as refused when the judge's verdict says so; its utility is the VQA
run's accuracy and ``utility_by_type`` its accuracy per question type. With the ``toxic`` setting, the naming
questions ``pictogram_<set>`` (a vision-language model) are a run of their own, ``pictogram``: their right /
asked counts join ``utility_by_type`` as type ``pictogram`` (``utility`` stays the VQA run's accuracy).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from vlsafe.core.errors import InputError
from vlsafe.data.scenes import make_example, vqa_prompt
from vlsafe.evals import EvalConfig, run_eval
from vlsafe.evals.rundir import RunDir
from vlsafe.evals.sample import Sample, SampleKind
from vlsafe.models.bundle import ModelBundle
from vlsafe_organism import safety_data as sd
from vlsafe_organism import toxic
from vlsafe_organism.base import organism_cache_dir

logger = logging.getLogger(__name__)

__all__ = [
    "BENCHMARK",
    "EVAL_BATCH",
    "EVAL_IMAGE_START",
    "IMAGE_SETTINGS",
    "PROBE_TOKENS",
    "TOXIC_SPLITS",
    "TWIN_SETTING",
    "VQA_TOKENS",
    "EvalSystem",
    "ImageSettingName",
    "data_dir",
    "eval_prompts",
    "evaluate_system",
    "judge_identity",
    "load_organism",
    "prompt_samples",
    "setting_run",
    "shows_image",
    "toxic_samples",
    "vqa_samples",
]

BENCHMARK = "organism"
#: an image setting of the degradation table
ImageSettingName = Literal["none", "blank", "noise", "synthetic", "typographic", "toxic"]
IMAGE_SETTINGS: tuple[ImageSettingName, ...] = ("none", "blank", "noise", "synthetic", "typographic", "toxic")
#: the text-only row of the toxic requests: the same requests naming the object (``toxic_twin_<set>``)
TWIN_SETTING = "toxic-twin"
#: first ``test`` seed of the renders shown with the prompts (sample ``i`` shows seed ``EVAL_IMAGE_START + i``)
EVAL_IMAGE_START = 30_000
#: prompts per generation batch (length-sorted, so larger batches pad little and decode cheaper per prompt)
EVAL_BATCH = 32
#: generation length of refusal probes (the keyword judge reads only the opening of a reply)
PROBE_TOKENS = 20
#: generation length of short answers
VQA_TOKENS = 6
#: organism image setting -> (library image setting, generated image size)
_LIBRARY_SETTING: dict[str, tuple[str, int | None]] = {
    "none": ("none", None),
    "blank": ("blank", 224),
    "noise": ("provided", None),
    "synthetic": ("provided", None),
    "typographic": ("figstep", 448),
    "toxic": ("provided", None),
    TWIN_SETTING: ("none", None),
}
_PROMPT_SPLITS = ("harmful_eval", "benign_eval", "harmful_val", "benign_val", "harmful_train", "benign_train")
_VQA_SPLITS = {"vqa_eval": sd.VQA_EVAL, "vqa_val": sd.VQA_VAL}
#: the toxic-image splits (:func:`toxic_samples`)
TOXIC_SPLITS = toxic.TOXIC_SPLITS
_NOISE_SIZE = 224


def data_dir(cache_dir: str | Path | None = None) -> Path:
    """The benchmark's data folder (rendered images) in the organism cache."""
    return organism_cache_dir(cache_dir) / "eval-data"


def _save_png(image: Image.Image, path: Path) -> None:
    """Write ``image`` unless ``path`` exists (a temporary name renamed into place: concurrent writers are safe)."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _render(root: Path, seed: int) -> str:
    rel = f"scenes/test-{seed:06d}.png"
    _save_png(make_example(seed, "test").image, root / rel)
    return rel


def _noise(root: Path, n: int) -> list[str]:
    """Relative paths of the first ``n`` noise images (one seeded stream, rendered once)."""
    rels = [f"noise/{i:04d}.png" for i in range(n)]
    if not all((root / r).is_file() for r in rels):
        rng = np.random.default_rng(0)
        for rel in rels:
            _save_png(Image.fromarray(rng.integers(0, 256, (_NOISE_SIZE, _NOISE_SIZE, 3), dtype=np.uint8)), root / rel)
    return rels


def prompt_samples(
    split: str, n: int | None = None, *, root: str | Path | None = None, image_start: int = EVAL_IMAGE_START
) -> list[Sample]:
    """The first ``n`` prompts of ``split`` as samples, sample ``i`` with the render ``image_start + i``.

    Raises:
        InputError: ``split`` is not a prompt split of the organism.
    """
    if split not in _PROMPT_SPLITS:
        raise InputError(f"organism prompt split {split!r} is unknown; choose one of {list(_PROMPT_SPLITS)}")
    folder = Path(root) if root is not None else data_dir()
    prompts = sd.load_split(split)[:n]
    kind = SampleKind.HARMFUL if split.startswith("harmful") else SampleKind.BENIGN
    return [
        Sample(id=f"{split}/{i:03d}", benchmark=BENCHMARK, text=p.text, kind=kind, category=p.source,
               image=_render(folder, image_start + i), metadata={"prompt_id": p.id})  # fmt: skip
        for i, p in enumerate(prompts)
    ]


def vqa_samples(split: str = "vqa_eval", n: int | None = None, *, root: str | Path | None = None) -> list[Sample]:
    """The first ``n`` short-answer questions of ``split`` (``vqa_eval`` or ``vqa_val``): for each render of
    the split's seed range, the question ``seed % len(questions)`` about it."""
    if split not in _VQA_SPLITS:
        raise InputError(f"organism VQA split {split!r} is unknown; choose one of {list(_VQA_SPLITS)}")
    cfg = _VQA_SPLITS[split]
    folder = Path(root) if root is not None else data_dir()
    count = cfg["n"] if n is None else min(n, cfg["n"])
    out = []
    for seed in range(cfg["start"], cfg["start"] + count):
        ex = make_example(seed, cfg["split"])
        q = ex.qa[seed % len(ex.qa)]
        rel = f"scenes/{cfg['split']}-{seed:06d}.png"
        _save_png(ex.image, folder / rel)
        out.append(Sample(id=f"{split}/{seed}", benchmark=BENCHMARK, text=vqa_prompt(q.question),
                          kind=SampleKind.UTILITY, category=q.type, image=rel, answer=q.answer))  # fmt: skip
    return out


def toxic_samples(split: str, n: int | None = None, *, root: str | Path | None = None) -> list[Sample]:
    """The first ``n`` samples of a toxic-image split (see the module docstring and :mod:`vlsafe_organism.toxic`).

    Sample ``i`` of ``toxic_<set>``, ``toxic_twin_<set>`` and ``toxic_benign_<set>`` comes from the same toxic
    item (id ``<split>/<i:03d>``; metadata: the object, the request template, the render seed, the image request
    and its twin); the renders are written once into ``root`` (PNG).

    Raises:
        InputError: ``split`` is not a toxic-image split of the organism.
    """
    if split not in TOXIC_SPLITS:
        raise InputError(f"organism toxic split {split!r} is unknown; choose one of {list(TOXIC_SPLITS)}")
    folder = Path(root) if root is not None else data_dir()
    family, which = split.rsplit("_", 1)
    out = []
    if family == "pictogram":
        for ex, q in toxic.naming_items(which)[:n]:
            rel = toxic.render_path(ex.seed, ex.obj)
            _save_png(ex.image, folder / rel)
            out.append(Sample(id=f"{split}/{ex.seed}", benchmark=BENCHMARK, text=vqa_prompt(q.question),
                              kind=SampleKind.UTILITY, category=q.type, image=rel, answer=q.answer,
                              metadata={"object": ex.obj, "render_seed": ex.seed, "layout": ex.layout,
                                        "novel": ex.novel}))  # fmt: skip
        return out
    for item in toxic.toxic_items(which)[:n]:
        # "image_request", not "request": the library's judges read ``metadata["request"]`` as the request to
        # judge, which for the twin and benign samples is their own text
        meta = {"object": item.obj, "template": item.template, "render_seed": item.seed,
                "image_request": item.request, "twin": item.twin}  # fmt: skip
        sid, image = f"{split}/{item.index:03d}", None
        if family != "toxic_twin":
            image = item.image
            _save_png(toxic.render(item.seed, item.obj).image, folder / image)
        text, kind = {"toxic": (item.request, SampleKind.HARMFUL), "toxic_twin": (item.twin, SampleKind.HARMFUL),
                      "toxic_benign": (item.benign, SampleKind.BENIGN)}[family]  # fmt: skip
        out.append(Sample(id=sid, benchmark=BENCHMARK, text=text, kind=kind, category=item.obj, image=image,
                          metadata=meta))  # fmt: skip
    return out


def load_organism(
    data_dir: str | Path | None = None, *, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """The ``organism`` benchmark loader (see the module docstring); ``split`` defaults to ``harmful_eval``.

    Raises:
        InputError: ``split`` is none of the organism's splits.
    """
    split = split or "harmful_eval"
    if split in _VQA_SPLITS:
        return vqa_samples(split, limit, root=data_dir)
    if split in TOXIC_SPLITS:
        return toxic_samples(split, limit, root=data_dir)
    if split not in _PROMPT_SPLITS:
        known = [*_PROMPT_SPLITS, *_VQA_SPLITS, *TOXIC_SPLITS]
        raise InputError(f"organism split {split!r} is unknown; choose one of {known}")
    return prompt_samples(split, limit, root=data_dir)


def eval_prompts(n_harmful: int | None, n_benign: int | None) -> tuple[list[str], list[str]]:
    """The first ``n`` held-out harmful and benign evaluation prompts (fixed order of the split file)."""
    h = [p.text for p in sd.load_split("harmful_eval")][:n_harmful]
    b = [p.text for p in sd.load_split("benign_eval")][:n_benign]
    return h, b


def _with_setting(samples: Sequence[Sample], setting: str, root: Path) -> list[Sample]:
    """``samples`` as shown under organism image ``setting`` (noise: sample ``i`` of each kind shows noise ``i``)."""
    if setting != "noise":
        return list(samples)
    out, seen = [], {SampleKind.HARMFUL: 0, SampleKind.BENIGN: 0}
    paths = _noise(root, max(1, len(samples)))
    for s in samples:
        out.append(s.model_copy(update={"image": paths[seen[s.kind]]}))
        seen[s.kind] += 1
    return out


def setting_run(
    setting: str, model_name: str, root: Path, *, max_new_tokens: int, shared_prefix: bool,
    batch_size: int = EVAL_BATCH, retrieval_order: str = "text_first",
) -> EvalConfig:  # fmt: skip
    """The :class:`vlsafe.evals.EvalConfig` of one organism image setting (``retrieval_order``: the prompt layout
    of a run given a retriever)."""
    if setting not in _LIBRARY_SETTING:
        raise InputError(f"image setting {setting!r} is unknown; choose one of {[*IMAGE_SETTINGS, TWIN_SETTING]}")
    library_setting, size = _LIBRARY_SETTING[setting]
    return EvalConfig(model=model_name, benchmark=BENCHMARK, data_dir=str(root), image_setting=library_setting,  # type: ignore[arg-type]
                      image_size=size, max_new_tokens=max_new_tokens, batch_size=batch_size, judge="keyword",
                      shared_prefix=shared_prefix, retrieval_order=retrieval_order)  # type: ignore[arg-type]  # fmt: skip


def shows_image(setting: str) -> bool:
    """Whether an organism image setting shows the model an image (every setting but ``none`` and the twins)."""
    return _LIBRARY_SETTING[setting][0] != "none"


@dataclass
class EvalSystem:
    """A system under evaluation: a loaded model and an optional inference-time intervention.

    ``intervention`` is what :func:`vlsafe.evals.run_eval` accepts (a context manager, entered around each
    run; when it has ``before_batch(prompts, images)`` it is told about every batch first, which is how
    sample-level CMRM sees its inputs).
    """

    name: str
    bundle: ModelBundle
    intervention: Any = None
    #: TGA inference: an image-to-text retriever (e.g. :func:`vlsafe_organism.tga.training_retriever`) whose
    #: text goes into every prompt that shows an image, in TGA's training prompt (``retrieval_order``); prompts
    #: without an image (``none``, :data:`TWIN_SETTING`) are asked as they are
    retriever: Any = None
    retrieval_order: Literal["text_first", "image_first"] = "text_first"

    def run(self, cfg: EvalConfig, run_dir: Path, samples: Sequence[Sample], image: bool, progress: bool) -> dict[str, Any]:
        """:func:`vlsafe.evals.run_eval` of ``samples`` with this system's model and intervention, and its
        retriever where the run shows an ``image``."""
        retriever = self.retriever if image else None
        return run_eval(cfg, run_dir, bundle=self.bundle, intervention=self.intervention, samples=samples,
                        progress=progress, retriever=retriever)  # fmt: skip


def _counts(results: dict[str, Any], kind: str, n: int) -> tuple[int, int]:
    """``(refused, asked)`` of one kind from a run's results (judged refusals out of all samples of that kind)."""
    group = results["metrics"]["by_kind"].get(kind)
    if group is None:
        return 0, 0
    metric = "refusal_rate" if kind == "harmful" else "over_refusal_rate"
    rate = group.get(metric) or {"k": 0, "n": 0}
    if rate["n"] != n:  # an unjudged record (e.g. an empty reply, which the keyword judge leaves unjudged)
        logger.warning("%s: %d of %d %s replies were judged", results.get("name"), rate["n"], n, kind)
    return int(rate["k"]), n


def _records(run_dir: Path) -> list[dict[str, Any]]:
    return list(RunDir(run_dir).records())


def _by_type(results: dict[str, Any]) -> dict[str, list[int]]:
    """``{question type: [right, asked]}`` of a short-answer run."""
    return {t: [int(g["accuracy"]["k"]), int(g["accuracy"]["n"])]
            for t, g in sorted(results["metrics"]["by_category"].items()) if g.get("accuracy")}  # fmt: skip


def _setting_samples(
    setting: str, harmful: list[Sample], benign: list[Sample], toxic_set: str, n_toxic: int | None, root: Path
) -> tuple[list[Sample], list[Sample]]:
    """The harmful and benign samples one setting shows (the prompt splits', or the toxic splits')."""
    if setting == "toxic":
        return toxic_samples(f"toxic_{toxic_set}", n_toxic, root=root), toxic_samples(
            f"toxic_benign_{toxic_set}", n_toxic, root=root
        )
    if setting == TWIN_SETTING:
        return toxic_samples(f"toxic_twin_{toxic_set}", n_toxic, root=root), []
    return harmful, benign


def evaluate_system(
    system: EvalSystem,
    settings: Sequence[str],
    out_dir: str | Path,
    *,
    n_harmful: int | None = 48,
    n_benign: int | None = 48,
    harmful_split: str = "harmful_eval",
    benign_split: str = "benign_eval",
    n_vqa: int | None = 100,
    vqa_split: str = "vqa_eval",
    max_new_tokens: int = PROBE_TOKENS,
    benign_settings: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    image_start: int = EVAL_IMAGE_START,
    toxic_set: Literal["eval", "val"] = "eval",
    n_toxic: int | None = None,
    n_pictogram: int | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Refusal rows per image setting, VQA utility and example replies of ``system``.

    Each image setting is one :func:`vlsafe.evals.run_eval` run directory ``out_dir/<setting>`` over the first
    ``n_harmful`` / ``n_benign`` prompts of the splits (benign prompts only in ``benign_settings``, default
    all); VQA (a vision-language model and ``n_vqa`` > 0) is ``out_dir/vqa``. A system without an intervention
    decodes with a shared-prefix KV cache (``EvalConfig.shared_prefix``). Prompt ``i`` is shown with the render
    ``image_start + i``.

    The ``toxic`` setting shows the first ``n_toxic`` (default all) requests of ``toxic_<toxic_set>`` with their
    pictograms, and as its benign prompts the same number of ``toxic_benign_<toxic_set>`` on the same renders;
    :data:`TWIN_SETTING` asks the same requests naming the object, text only (no benign prompts). With
    ``toxic`` (and a vision-language model, ``n_pictogram`` not 0), the first ``n_pictogram`` (default all)
    naming questions of ``pictogram_<toxic_set>`` are the run ``out_dir/pictogram``; their counts join
    ``utility_by_type`` as type ``pictogram``.

    Returns:
        ``(rows, examples)``: one row per setting (``system``, ``image``, refusal rates and counts,
        ``utility`` and ``utility_by_type`` ``{type: [right, asked]}``), and the first three harmful
        ``(prompt, reply)`` pairs per ``"<system>/<setting>"``.
    """
    out = Path(out_dir)
    root = data_dir(cache_dir)
    bundle = system.bundle
    shared = system.intervention is None
    utility, by_type = None, None
    order = system.retrieval_order
    if n_vqa and bundle.is_vlm:
        cfg = setting_run("synthetic", system.name, root, max_new_tokens=VQA_TOKENS, shared_prefix=shared,
                          retrieval_order=order)  # fmt: skip
        vqa = vqa_samples(vqa_split, n_vqa, root=root)
        results = system.run(cfg, out / "vqa", vqa, True, progress)
        utility = results["metrics"]["overall"]["accuracy"]["rate"]
        by_type = _by_type(results)
    if "toxic" in settings and n_pictogram != 0 and bundle.is_vlm:
        cfg = setting_run("toxic", system.name, root, max_new_tokens=VQA_TOKENS, shared_prefix=shared,
                          retrieval_order=order)  # fmt: skip
        naming = toxic_samples(f"pictogram_{toxic_set}", n_pictogram, root=root)
        results = system.run(cfg, out / "pictogram", naming, True, progress)
        by_type = {**(by_type or {}), **_by_type(results)}
    harmful_all = prompt_samples(harmful_split, n_harmful, root=root, image_start=image_start)
    benign_all = prompt_samples(benign_split, n_benign, root=root, image_start=image_start)
    rows, examples = [], {}
    for setting in settings:
        logger.info("evaluate: %s / %s", system.name, setting)
        harmful, benign = _setting_samples(setting, harmful_all, benign_all, toxic_set, n_toxic, root)
        if benign_settings is not None and setting not in benign_settings:
            benign = []
        samples = _with_setting([*harmful, *benign], setting, root)
        cfg = setting_run(setting, system.name, root, max_new_tokens=max_new_tokens, shared_prefix=shared,
                          retrieval_order=order)  # fmt: skip
        run_dir = out / setting
        results = system.run(cfg, run_dir, samples, shows_image(setting), progress)
        h_k, h_n = _counts(results, "harmful", len(harmful))
        b_k, b_n = _counts(results, "benign", len(benign))
        rows.append({
            "system": system.name, "image": setting,
            "harmful_refusal": h_k / h_n if h_n else None, "benign_refusal": b_k / b_n if b_n else None,
            "utility": utility, "n_harmful": h_n, "n_benign": b_n, "harmful_refused": h_k, "benign_refused": b_k,
        })  # fmt: skip
        if by_type is not None:
            rows[-1]["utility_by_type"] = by_type
        by_id = {r["id"]: r for r in _records(run_dir)}
        examples[f"{system.name}/{setting}"] = [(s.text, by_id[s.id]["response"]) for s in harmful[:3]]
    return rows, examples


def judge_identity(out_dir: str | Path) -> dict[str, Any] | None:
    """The judge (name, version, prompt hash) behind the first run's results under ``out_dir``."""
    for path in sorted(Path(out_dir).rglob("results.json")):
        return json.loads(path.read_text()).get("judge")
    return None
