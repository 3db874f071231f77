"""A safety-tracking callback for every vlsafe trainer (VL adaptation, SFT, DPO, TGA).

:class:`SafetyTracker` is a ``transformers.TrainerCallback``: pass it in ``callbacks=`` of the engine (or any
``transformers`` / TRL trainer). Every ``every`` optimizer steps (on the engine's per-step log) it runs a small fixed probe with the evaluation harness
(:func:`vlsafe.evals.run_eval`, keyword judge by default) on the model being trained and appends one line
to a curve file (JSON lines)::

    {"step": 20, "harmful_refusal_text": 0.81, "harmful_refusal_image": 0.44, "over_refusal": 0.12,
     "utility": 0.62, "n": {...}, "train": {"loss": 1.93, ...}, "seconds": 14.2}

The probe (built once, seeded, written under ``probe_dir``):

* ``harmful_text``: harmful requests, text only;
* ``harmful_image``: the same requests, each with a synthetic organism image (the setting where VL
  adaptation erodes refusal);
* ``overrefusal``: harmless requests that sound harmful (the bundled XSTest-style set);
* ``utility``: multiple-choice questions about synthetic images, scored by log-likelihood (text-only
  models get the image's caption instead).

:func:`read_curve` and :func:`curve_figure` give the report its data and figure.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from transformers import TrainerCallback

from vlsafe.core.errors import InputError
from vlsafe.core.io import read_jsonl, write_jsonl_atomic
from vlsafe.data.scenes import make_example
from vlsafe.evals import EvalConfig, ImageSetting, Sample, SampleKind, load_benchmark, run_eval
from vlsafe.models.bundle import ModelBundle
from vlsafe.report.figures import line_curves

logger = logging.getLogger(__name__)

__all__ = ["CURVE_KEYS", "ProbeSettings", "SafetyTracker", "build_probe", "curve_figure", "read_curve"]

#: Curve columns and the category / metric each one reads from the probe's results.
CURVE_KEYS: dict[str, tuple[str, str]] = {
    "harmful_refusal_text": ("harmful_text", "refusal_rate"),
    "harmful_refusal_image": ("harmful_image", "refusal_rate"),
    "over_refusal": ("overrefusal", "over_refusal_rate"),
    "utility": ("utility", "accuracy"),
}


class ProbeSettings(BaseModel):
    """What the safety probe asks and how often.

    Attributes:
        every: probe every N optimizer steps.
        at_start: also probe before the first step (step 0, when the trainer calls :meth:`SafetyTracker.start`).
        harmful: harmful requests (default: the first ``n_harmful`` of ``harmful_benchmark``).
        harmful_benchmark: registered text benchmark to draw harmful requests from.
        n_harmful, n_overrefusal, n_utility: probe sizes (0 turns a part off).
        max_new_tokens: generation length (refusals show in the first few tokens).
        batch_size: generation batch size.
        judge: registered judge name (``keyword`` needs no model).
        seed: selects the synthetic images and question order.
    """

    model_config = ConfigDict(extra="forbid")
    every: int = Field(50, gt=0)
    at_start: bool = True
    harmful: list[str] | None = None
    harmful_benchmark: str = "strongreject"
    n_harmful: int = Field(16, ge=0)
    n_overrefusal: int = Field(16, ge=0)
    n_utility: int = Field(16, ge=0)
    max_new_tokens: int = Field(24, gt=0)
    batch_size: int = Field(8, gt=0)
    judge: str = "keyword"
    seed: int = 0


def _harmful_texts(settings: ProbeSettings) -> list[str]:
    if settings.harmful is not None:
        texts = [t.strip() for t in settings.harmful if t.strip()]
    else:

        texts = [s.text for s in load_benchmark(settings.harmful_benchmark, limit=settings.n_harmful)]
    return texts[: settings.n_harmful]


def build_probe(settings: ProbeSettings, probe_dir: str | Path, *, vlm: bool = True) -> list[Any]:
    """Write the probe's images under ``probe_dir/images`` and return its samples.

    Args:
        settings: probe sizes and sources.
        probe_dir: data directory of the image samples.
        vlm: ``False`` for a text-only model: no image samples; utility questions carry the caption.
    """

    root = Path(probe_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    samples: list[Any] = []
    for i, text in enumerate(_harmful_texts(settings)):
        samples.append(
            Sample(
                id=f"harm-text-{i}",
                benchmark="probe",
                text=text,
                kind=SampleKind.HARMFUL,
                category="harmful_text",
            )
        )
        if vlm:
            ex = make_example(settings.seed * 10_000 + i, "test")
            rel = f"images/harm_{i}.png"
            ex.image.save(root / rel)
            samples.append(
                Sample(
                    id=f"harm-image-{i}",
                    benchmark="probe",
                    text=text,
                    kind=SampleKind.HARMFUL,
                    category="harmful_image",
                    image=rel,
                    image_setting=ImageSetting.PROVIDED,
                )  # fmt: skip
            )
    if settings.n_overrefusal:

        for s in load_benchmark("overrefusal", limit=settings.n_overrefusal):
            samples.append(Sample(id=f"over-{s.id}", benchmark="probe", text=s.text, kind=SampleKind.OVER_REFUSAL,
                                  category="overrefusal"))  # fmt: skip
    for j in range(settings.n_utility):
        ex = make_example(settings.seed * 10_000 + 5_000 + j, "test")
        qa = ex.qa[j % len(ex.qa)]
        rel = f"images/util_{j}.png"
        ex.image.save(root / rel)
        samples.append(
            Sample(
                id=f"util-{j}",
                benchmark="probe",
                text=qa.question,
                kind=SampleKind.UTILITY,
                category="utility",
                image=rel,
                image_setting=ImageSetting.PROVIDED if vlm else ImageSetting.CAPTION,
                caption=ex.caption,
                choices=list(qa.choices),
                answer=qa.answer,
            )  # fmt: skip
        )
    if not samples:
        raise InputError("the safety probe is empty: every part has size 0")
    return samples


def read_curve(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a curve file, sorted by step (a missing file gives ``[]``)."""
    path = Path(path)
    if not path.is_file():
        return []
    return sorted(read_jsonl(path, "safety curve", required=("step",)), key=lambda r: r["step"])


def curve_figure(
    curve: str | Path | Sequence[dict[str, Any]],
    title: str = "Safety during training",
    labels: dict[str, str] | None = None,
) -> Any:
    """Line plot of a curve's rates against the step (:func:`vlsafe.report.figures.line_curves`).

    Args:
        curve: a curve file or its rows (``{"step": ..., <metric>: rate, ...}``).
        title: figure title.
        labels: the columns to draw and their legend labels, in order (default: every :data:`CURVE_KEYS`
            column the rows have, labelled by name).
    """

    rows = read_curve(curve) if isinstance(curve, (str, Path)) else list(curve)
    if not rows:
        raise InputError("the safety curve has no rows to draw")
    labels = labels or {key: key.replace("_", " ") for key in CURVE_KEYS}
    x = [r["step"] for r in rows]
    curves = {
        label: [float("nan") if r.get(key) is None else r[key] for r in rows]
        for key, label in labels.items()
        if any(r.get(key) is not None for r in rows)
    }
    return line_curves(x, curves, title=title, xlabel="optimizer step", ylabel="rate")


class SafetyTracker(TrainerCallback):
    """Trainer callback: probe safety every ``settings.every`` steps and append to ``curve_path``.

    As a ``transformers.TrainerCallback`` it probes the untrained model at ``on_train_begin`` (:meth:`start`)
    and after every ``every``-th optimizer step when that step's training log arrives (``on_log``, with the
    step's metrics in the curve row's ``train``); :meth:`on_step` is the same hook for a hand-written loop.

    Args:
        bundle: the model being trained (the trainer may swap ``bundle.model`` for a peft wrapper; the
            tracker reads ``bundle.model`` at each probe).
        settings: :class:`ProbeSettings`.
        curve_path: the JSON-lines curve file (rows at or after a probed step are replaced, so a resumed
            run does not duplicate steps).
        run_root: folder for the probe's data and per-step evaluation run directories.
    """

    def __init__(
        self, bundle: ModelBundle, settings: ProbeSettings, curve_path: str | Path, run_root: str | Path
    ) -> None:
        self.bundle, self.settings = bundle, settings
        self.curve_path, self.run_root = Path(curve_path), Path(run_root)
        self._samples: list[Any] | None = None

    @property
    def samples(self) -> list[Any]:
        if self._samples is None:
            self._samples = build_probe(self.settings, self.run_root / "data", vlm=self.bundle.is_vlm)
        return self._samples

    def start(self) -> dict[str, Any] | None:
        """Probe the untrained model as step 0 when ``at_start`` is set and the curve has no row yet."""
        if self.settings.at_start and not read_curve(self.curve_path):
            return self.probe(0)
        return None

    def on_step(self, step: int, metrics: dict[str, float]) -> bool:
        """The hook of a hand-written loop; never asks to stop."""
        if step % self.settings.every == 0:
            self.probe(step, metrics)
        return False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """transformers' hook: :meth:`start`."""
        self.start()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:  # fmt: skip
        """transformers' hook: probe after every ``every``-th step, on that step's training log."""
        logs = logs or {}
        step = int(state.global_step)
        if "loss" in logs and "train_runtime" not in logs and step > 0 and step % self.settings.every == 0:
            self.probe(step, {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    def probe(self, step: int, train_metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Run the probe now and append its row to the curve; returns the row."""

        t0 = time.perf_counter()
        model = self.bundle.model
        was_training = model.training
        model.eval()
        config_obj: Any = getattr(model, "config", None)
        cache = getattr(config_obj, "use_cache", None)
        if cache is not None:
            config_obj.use_cache = True  # trainers turn the KV cache off; generation wants it
        try:
            config = EvalConfig(
                model=self.bundle.name or "training-model",
                benchmark="probe",
                data_dir=str(self.run_root / "data"),
                judge=self.settings.judge,
                max_new_tokens=self.settings.max_new_tokens,
                batch_size=self.settings.batch_size,
                seed=self.settings.seed,
            )
            out_dir = self.run_root / f"step_{step:07d}"
            if out_dir.exists():  # a resumed run re-probes this step with the current weights
                shutil.rmtree(out_dir)
            results = run_eval(config, out_dir, bundle=self.bundle, samples=self.samples, progress=False)
        finally:
            if cache is not None:
                config_obj.use_cache = cache
            model.train(was_training)
        by_cat = results["metrics"]["by_category"]
        row: dict[str, Any] = {"step": int(step)}
        counts: dict[str, int] = {}
        for key, (category, metric) in CURVE_KEYS.items():
            value = (by_cat.get(category) or {}).get(metric)
            row[key] = None if not value else value["rate"]
            counts[key] = 0 if not value else int(value["n"])
        row["n"] = counts
        row["train"] = {k: v for k, v in (train_metrics or {}).items() if k != "step"}
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self._append(row)
        logger.info("safety probe at step %d: %s", step, {k: row[k] for k in CURVE_KEYS})
        return row

    def _append(self, row: dict[str, Any]) -> None:
        kept = [r for r in read_curve(self.curve_path) if r["step"] < row["step"]]
        write_jsonl_atomic(self.curve_path, [*kept, row])
