"""The organism's diagnosis for the demo report: where the image breaks safety, and which layers move.

:func:`analysis_sections` runs, on ``organism:vl`` with held-out harmful prompts each paired with a
held-out benign synthetic image, the three analyses of :mod:`vlsafe.analysis` into
``out_dir/analysis/{directions,shift,layers}`` (data + figures + summary as usual):

1. the refusal direction and probes from harmful vs benign *training* prompts (text only);
2. the representation shift of the variants image / blank / noise / caption against text only, projected
   on that direction;
3. the logit-lens safety layers for text only vs the image (and the caption).

Steps 2 and 3 share one forward pass per variant and batch (the lens reads the same last-token states
the shift statistics do), which halves the CPU cost; the saved data is what ``run_shift`` /
``run_layers`` would write, and the figures are drawn by :func:`vlsafe.analysis.redraw`.

:func:`weight_sections`, :func:`default_weight_pairs` and :func:`checkpoint_dir` live in
:mod:`vlsafe_organism.demo_weights` and are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from vlsafe.analysis import (
    LensResult,
    ShiftAccumulator,
    ShiftResult,
    lens_probabilities,
    redraw,
    refusal_token_ids,
    run_directions,
    unit_directions,
)
from vlsafe.analysis.data_io import save_data
from vlsafe.analysis.directions import directions_from_data
from vlsafe.analysis.items import as_items, batched
from vlsafe.analysis.lens import LENS_STATS, lens_to_data, lens_update
from vlsafe.analysis.shift import shift_to_data
from vlsafe.core.errors import InputError
from vlsafe.data.scenes import make_example
from vlsafe.hooks.forward import build_variant, forward_states
from vlsafe.models import InputItem, ModelBundle, load_model
from vlsafe.report import ReportFigure, ReportTable, Section, line_curves, save_png
from vlsafe_organism import safety_data as sd
from vlsafe_organism.demo_weights import (
    BASE_LLM_REF,
    checkpoint_dir,
    default_weight_pairs,
    weight_sections,
)
from vlsafe_organism.evaluation import EVAL_IMAGE_START, eval_prompts

__all__ = [
    "BASE_LLM_REF",
    "SHIFT_VARIANTS",
    "analysis_sections",
    "default_weight_pairs",
    "demo_items",
    "checkpoint_dir",
    "weight_sections",
]

logger = logging.getLogger(__name__)

#: Variants of the shift analysis (reference first) and of the logit lens.
SHIFT_VARIANTS = ("text", "caption", "image", "blank", "noise")
LENS_VARIANTS = ("text", "caption", "image")


def demo_items(n: int) -> list[InputItem]:
    """The first ``n`` held-out harmful prompts, each with its held-out benign synthetic image and caption."""
    harmful, _ = eval_prompts(n, 0)
    items = []
    for i, text in enumerate(harmful):
        ex = make_example(EVAL_IMAGE_START + i, "test")  # the image the "synthetic" setting shows with prompt i
        items.append(InputItem(text, ex.image, ex.caption))
    return items


def _direction_prompts(n: int) -> tuple[list[str], list[str]]:
    return (
        [p.text for p in sd.load_split("harmful_train")][:n],
        [p.text for p in sd.load_split("benign_train")][:n],
    )


def _shared_pass(
    bundle: ModelBundle,
    items: list[InputItem],
    directions: dict[int, torch.Tensor],
    *,
    batch_size: int,
    progress: bool,
) -> tuple[ShiftResult, LensResult]:
    """Shift statistics of :data:`SHIFT_VARIANTS` and the logit lens of :data:`LENS_VARIANTS`, one pass."""
    layers = list(range(bundle.num_layers))
    shift = ShiftResult(
        layers=layers,
        variants=list(SHIFT_VARIANTS),
        reference="text",
        positions=["last", "text_mean"],
        meta={"model": bundle.name, "family": bundle.family, "seed": 0, "batch_size": batch_size},
    )
    mid = layers[len(layers) // 2]
    acc = ShiftAccumulator(shift, bundle.hidden_size, unit_directions(directions), [mid, layers[-1]], 500)
    tokens = refusal_token_ids(bundle.tokenizer)
    refusal = torch.tensor(sorted(tokens))
    lens = LensResult(
        list(LENS_VARIANTS), len(layers), 10, tokens, meta={"model": bundle.name, "family": bundle.family}
    )
    for v in LENS_VARIANTS:
        for stat in LENS_STATS:
            lens.sums[f"{stat}.{v}"] = torch.zeros(len(layers), dtype=torch.float64)
        for which in ("activation", "end"):
            lens.sums[f"{which}.{v}"] = torch.zeros(len(layers) + 1, dtype=torch.float64)
    lens.caption_cosine = torch.zeros(len(layers), dtype=torch.float64)
    total = math.ceil(len(items) / batch_size)
    for b, chunk in enumerate(
        tqdm(batched(items, batch_size), total=total, desc="shift + lens", disable=not progress)
    ):
        states = {}
        for v in SHIFT_VARIANTS:
            positions = ["last", "text_mean"] + (["image_mean"] if v == "image" else [])
            batch = build_variant(bundle, chunk, v, seed=b * batch_size)
            got, _ = forward_states(bundle, batch, layers, positions)
            if v in LENS_VARIANTS:
                probs = torch.stack([lens_probabilities(bundle, got["last"][j]) for j in layers])
                lens_update(lens, v, probs, refusal)
            if "image_mean" in got:
                caps = [str(r.caption) for r in chunk]
                cap, _ = forward_states(bundle, build_variant(bundle, caps, "text"), layers, ["text_mean"])
                for j in layers:
                    cos = torch.nn.functional.cosine_similarity(
                        got["image_mean"][j].double(), cap["text_mean"][j].double(), dim=-1
                    )
                    lens.caption_cosine[j] += float(cos.sum())
                lens.caption_count += len(chunk)
            states[v] = {p: got[p] for p in ("last", "text_mean")}
        acc.update(states)
        lens.count += len(chunk)
    return acc.finish(), lens


_fig = ReportFigure.from_file


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])


def analysis_sections(
    out_dir: Path,
    cache_dir: str | Path | None = None,
    n: int = 32,
    weight_pairs: Sequence[tuple[str, str | Path, str | Path]] | None = None,
    progress: bool = True,
    *,
    model: str | Path | ModelBundle = "organism:vl",
    items: Sequence[Any] | None = None,
    direction_prompts: tuple[Sequence[str], Sequence[str]] | None = None,
    batch_size: int = 8,
) -> tuple[list[Section], dict[str, Any]]:
    """Run the organism's diagnosis into ``out_dir/analysis`` and return report sections + headline numbers.

    Args:
        out_dir: demo output folder; the analyses go to ``out_dir/analysis/<kind>``.
        cache_dir: organism cache folder (default ``$VLSAFE_CACHE/organism``).
        n: held-out harmful prompts (each with a held-out synthetic image); also the number of harmful and
            of benign training prompts behind the refusal direction.
        weight_pairs: ``(label, checkpoint_a, checkpoint_b)`` for :func:`weight_sections`; ``None``: the
            organism's :func:`default_weight_pairs`; ``[]``: no weight analysis.
        progress: progress bars.
        model: the VLM (default the organism's ``organism:vl``).
        items: query items instead of :func:`demo_items` (text + image + caption each).
        direction_prompts: ``(harmful, benign)`` text prompts instead of the organism's training splits.
        batch_size: queries per forward pass.

    Returns:
        ``(sections, numbers)``: sections with figures and data-driven captions; numbers for ``results.json``.
    """
    start, cpu = time.perf_counter(), time.process_time()
    steps: dict[str, float] = {}

    def lap(name: str) -> None:
        steps[name] = round(time.process_time() - cpu - sum(steps.values()), 1)

    root = Path(out_dir) / "analysis"
    if isinstance(model, ModelBundle):
        bundle = model
    else:
        ref = str(model)
        if ref.startswith("organism:"):
            ref = str(checkpoint_dir(ref, cache_dir))
        bundle = load_model(ref, dtype="float32")
        bundle.model.eval()
    rows = as_items(items if items is not None else demo_items(n))
    rows.sort(key=lambda r: len(r.text))  # less padding per batch; every statistic is a mean over queries
    if not bundle.is_vlm or not all(r.image is not None and r.caption for r in rows):
        raise InputError("analysis_sections needs a VLM and items that each carry an image and a caption")
    harmful, benign = direction_prompts if direction_prompts is not None else _direction_prompts(n)
    lap("load")
    run_directions(
        bundle,
        list(harmful),
        list(benign),
        root / "directions",
        probe_steps=100,
        batch_size=batch_size,
        progress=progress,
    )
    ddata = json.loads((root / "directions" / "data.json").read_text())

    dres = directions_from_data(ddata, load_file(str(root / "directions" / "data.safetensors")))
    lap("directions")
    shift, lens = _shared_pass(bundle, rows, dres.directions, batch_size=batch_size, progress=progress)
    lap("shift_and_lens")
    for kind, (data, tensors) in (("shift", shift_to_data(shift)), ("layers", lens_to_data(lens))):
        save_data(root / kind, kind, data, tensors)
        redraw(root / kind)
    proj_fig = _projection_figure(root, shift, dres)
    sections, numbers = _sections(root, shift, lens, dres, proj_fig)
    lap("figures")
    if weight_pairs is None:
        weight_pairs = default_weight_pairs(cache_dir)
    if weight_pairs:
        wsec, wnum = weight_sections(out_dir, weight_pairs, cache_dir, progress=progress)
        sections += wsec
        numbers["weights"] = wnum
        lap("weights")
    numbers["seconds"] = round(time.perf_counter() - start, 1)
    numbers["cpu_seconds"] = round(time.process_time() - cpu, 1)
    numbers["cpu_seconds_by_step"] = steps
    (root / "headline.json").write_text(json.dumps(numbers, indent=1))
    return sections, numbers


def _projection_figure(root: Path, shift: ShiftResult, dres: Any) -> Path:
    x = [float(j) for j in shift.layers]
    curves = {f"queries: {v}": shift.mean("proj", "last", v).tolist() for v in shift.variants}
    fig = line_curves(
        x, curves, title="last-token state along the refusal direction", xlabel="layer",
        ylabel="mean projection", figsize=(7.0, 4.2),
    )  # fmt: skip
    ax = fig.axes[0]  # the text references in black/grey, the variants keep the PCA's colours
    ax.plot(x, [dres.harmful_projection[j] for j in shift.layers], "k--", label="harmful text (train)")
    ax.plot(
        x,
        [dres.harmless_projection[j] for j in shift.layers],
        "--",
        color="grey",
        label="benign text (train)",
    )
    ax.legend(fontsize="small")
    return save_png(fig, root / "figures" / "refusal_projection.png")


def _top10_figure(root: Path, lens: LensResult) -> Path:
    x = [float(j) for j in range(lens.num_layers)]
    fig = line_curves(
        x, {v: lens.mean("top1", v).tolist() for v in lens.variants},
        title="refusal token is the top-1 token (logit lens)",
        xlabel="layer", ylabel="share of requests",
    )  # fmt: skip
    return save_png(fig, root / "figures" / "refusal_top1_share.png")


def _first(values: Sequence[float], at_least: float) -> int | None:
    return next((j for j, v in enumerate(values) if v >= at_least), None)


def _sections(
    root: Path, shift: ShiftResult, lens: LensResult, dres: Any, proj_fig: Path
) -> tuple[list[Section], dict[str, Any]]:
    L = shift.layers
    n = shift.count
    cos_img = shift.mean("cos", "last", "image").tolist()
    cos_cap = shift.mean("cos", "last", "caption").tolist()
    rel = {v: shift.mean("rel", "last", v).tolist() for v in shift.variants if v != "text"}
    worst = min(range(len(L)), key=lambda i: cos_img[i])
    proj = {v: shift.mean("proj", "last", v).tolist() for v in shift.variants}
    gap = [dres.harmful_projection[j] - dres.harmless_projection[j] for j in L]
    move = {v: [proj[v][i] - proj["text"][i] for i in range(len(L))] for v in shift.variants if v != "text"}
    share = {v: [m / g if g else 0.0 for m, g in zip(vals, gap, strict=True)] for v, vals in move.items()}
    k = min(range(len(L)), key=lambda i: share["image"][i])  # the image's strongest pull away from refusal
    probe = [dres.probe_accuracy[j] for j in L]
    first_sep = next((j for j, a in zip(L, probe, strict=True) if a >= 0.95), None)
    end = {v: lens.layer_summary(v, "end") for v in lens.variants}
    mass = {v: lens.mean("mass", v).tolist() for v in lens.variants}
    peak = {v: _argmax(mass[v]) for v in lens.variants}
    cap_cos = (lens.caption_cosine / max(lens.caption_count, 1)).tolist()
    numbers: dict[str, Any] = {
        "n_queries": n,
        "layers": len(L),
        "image_cos_last_token_min": round(cos_img[worst], 4),
        "image_cos_min_layer": L[worst],
        "caption_cos_last_token_min": round(min(cos_cap), 4),
        "rel_l2_last_layer": {v: round(r[-1], 4) for v, r in rel.items()},
        "probe_acc_max": round(max(probe), 4),
        "probe_first_layer_ge_095": first_sep,
        "refusal_gap_layer": L[k],
        "refusal_gap": round(gap[k], 4),
        "move_along_refusal": {v: round(m[k], 4) for v, m in move.items()},
        "share_of_gap": {v: round(s[k], 4) for v, s in share.items()},
        "end_share": {v: round(end[v]["share"], 4) for v in lens.variants},
        "refusal_mass_last_layer": {v: round(mass[v][-1], 4) for v in lens.variants},
        "refusal_mass_peak": {
            v: {"layer": peak[v], "mass": round(mass[v][peak[v]], 4)} for v in lens.variants
        },
        "image_caption_cos_mean": round(sum(cap_cos) / max(len(cap_cos), 1), 4),
    }
    sh, ly, di = root / "shift" / "figures", root / "layers" / "figures", root / "directions" / "figures"
    mid, last = L[len(L) // 2], L[-1]
    cen = {v: float(shift.centroid_distance("last", v)[len(L) // 2]) for v in shift.variants if v != "text"}
    numbers["centroid_distance_mid_layer"] = {v: round(c, 2) for v, c in cen.items()}
    s_shift = Section(
        "Analysis: how far the image moves the hidden states",
        f"{n} held-out harmful requests, each with a held-out benign synthetic image, on the VL model; every "
        "variant is compared with the same request given as text only, at the last prompt token. "
        f"The image lowers the cosine to the text-only state to {cos_img[worst]:.3f} at layer {L[worst]} "
        f"(its caption in words: at least {min(cos_cap):.3f}); at the last layer the relative L2 distance is "
        + ", ".join(f"{v} {r[-1]:.2f}" for v, r in rel.items())
        + f". Distance of each variant's mean state from the text-only mean at layer {mid}: "
        + ", ".join(f"{v} {cen[v]:.1f}" for v in cen)
        + " (the PCA plots show the same separation).",
        figures=[
            _fig(sh / "shift_cosine_last.png", "Cosine to the text-only state per layer (last token)"),
            _fig(
                sh / "shift_relative_l2_last.png", "Relative L2 distance to text only per layer (last token)"
            ),
            _fig(sh / f"pca_layer{mid}.png", f"PCA of last-token states, layer {mid}"),
            _fig(sh / f"pca_layer{last}.png", f"PCA of last-token states, layer {last}"),
        ],
    )
    s_dir = Section(
        "Analysis: the refusal direction",
        f"Refusal direction = mean(harmful) - mean(benign) last-token state of {sum(dres.counts.values()) // 2} + "
        f"{sum(dres.counts.values()) - sum(dres.counts.values()) // 2} training prompts; a linear probe separates "
        f"held-out harmful from benign text with accuracy up to {max(probe):.2f}"
        + (f" (>= 0.95 from layer {first_sep})" if first_sep is not None else "")
        + f". At layer {L[k]} the image moves the harmful requests' last-token state by {move['image'][k]:+.2f} "
        f"along the direction, {share['image'][k]:+.0%} of the harmful-benign gap ({gap[k]:.2f}); blank "
        f"{share['blank'][k]:+.0%}, noise {share['noise'][k]:+.0%}, caption {share['caption'][k]:+.0%} "
        "(negative: toward benign, away from refusal).",
        figures=[
            _fig(di / "probe_accuracy.png", "Held-out probe accuracy per layer"),
            _fig(
                proj_fig, "Projection on the refusal direction per layer: harmful/benign text vs the queries"
            ),
        ],
    )
    top1 = {v: lens.mean("top1", v).tolist() for v in lens.variants}
    first = {v: _first(top1[v], 0.5) for v in lens.variants}
    numbers["first_layer_refusal_top1_half"] = first
    summary = [
        {
            "variant": v,
            "refusal mass peak": mass[v][peak[v]],
            "peak layer": peak[v],
            "first layer top-1 share >= 0.5": first[v],
            "refusal top-1 at some layer (share)": end[v]["share"],
            "refusal mass, last layer": mass[v][-1],
        }
        for v in lens.variants
    ]
    top_fig = _top10_figure(root, lens)

    def at(v: str) -> str:
        return f"layer {first[v]}" if first[v] is not None else "no layer"

    s_lens = Section(
        "Analysis: safety layers (logit lens)",
        f"Refusal-token probability read out of every layer at the last prompt token. Text only, the refusal "
        f"mass peaks at {mass['text'][peak['text']]:.2f} at layer {peak['text']} and a refusal token is the top-1 "
        f"token for half of the requests first at {at('text')}; with the image the peak is "
        f"{mass['image'][peak['image']]:.2f} (layer {peak['image']}), reached by half of the requests at "
        f"{at('image')}; last-layer mass {mass['text'][-1]:.2f} text vs {mass['image'][-1]:.2f} image "
        f"(caption in words: {mass['caption'][-1]:.2f}). The image-span mean state has cosine "
        f"{numbers['image_caption_cos_mean']:.2f} to its caption's text state (mean over layers).",
        tables=[ReportTable(summary, caption="Refusal readout per variant")],
        figures=[
            _fig(ly / "refusal_mass.png", "Refusal-token probability per layer (logit lens)"),
            _fig(top_fig, "Share of requests whose top-1 token is a refusal token, per layer"),
            _fig(ly / "image_caption_cosine.png", "Image-span vs caption-text state cosine per layer"),
        ],
    )
    return [s_shift, s_dir, s_lens], numbers
