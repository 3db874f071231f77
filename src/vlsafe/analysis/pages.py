"""Figures and summary sections of each analysis, drawn from its saved data (so they can be redrawn)."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from vlsafe.analysis.data_io import fig_ref
from vlsafe.analysis.directions import DirectionResult
from vlsafe.analysis.lens import LensResult
from vlsafe.analysis.plots import heatmap, pca_scatter
from vlsafe.analysis.shift import ShiftResult
from vlsafe.analysis.weights import WeightDiffResult
from vlsafe.report import ReportTable, Section, line_curves

Page = tuple[list[Section], dict[str, Figure]]

_POS_TEXT = {
    "last": "last prompt token",
    "text_mean": "mean over the query text",
    "image_mean": "mean over the image span",
    "mean": "mean over all tokens",
}


def _pair(interval: tuple[Any, Any]) -> tuple[list[float], list[float]]:
    return interval[0].tolist(), interval[1].tolist()


def _others(result: ShiftResult) -> list[str]:
    return [v for v in result.variants if v != result.reference]


def shift_page(result: ShiftResult) -> Page:
    """Sections and figures of a representation-shift analysis."""
    figs: dict[str, Figure] = {}
    sections = [
        Section(
            "Setup",
            f"Model `{result.meta.get('model', '')}` ({result.meta.get('family', '')}), {result.count} queries, "
            f"variants {', '.join(result.variants)}; every variant is compared with the same queries' "
            f"**{result.reference}** states, at layers {result.layers[0]}..{result.layers[-1]}.",
        )
    ]
    x = [float(layer) for layer in result.layers]
    for pos in result.positions:
        others = _others(result)
        cos = {v: result.mean("cos", pos, v).tolist() for v in others}
        bands = {v: _pair(result.interval("cos", pos, v)) for v in others}
        rel = {v: result.mean("rel", pos, v).tolist() for v in others}
        cen = {v: result.centroid_distance(pos, v).tolist() for v in others}
        figs[f"shift_cosine_{pos}"] = line_curves(
            x,
            cos,
            bands=bands,
            title=f"cosine to {result.reference} ({_POS_TEXT[pos]})",
            xlabel="layer",
            ylabel="mean cosine similarity",
        )
        figs[f"shift_relative_l2_{pos}"] = line_curves(
            x,
            rel,
            title=f"||h - h_{result.reference}|| / ||h_{result.reference}|| ({_POS_TEXT[pos]})",
            xlabel="layer",
            ylabel="relative L2 distance",
        )
        rows = result.rows(pos)
        for i, row in enumerate(rows):
            for v in others:
                row[f"{v} centroid dist."] = cen[v][i]
        sections.append(
            Section(
                f"Shift at the {_POS_TEXT[pos]}",
                "Mean over queries of the cosine similarity and of the L2 distance relative to the reference "
                "state's norm (shaded: 95% interval of the mean); centroid distance is the norm of the "
                "difference of the variant means (the dataset-level shift vector of CMRM).",
                tables=[ReportTable(rows)],
                figures=[
                    fig_ref(f"shift_cosine_{pos}", f"Cosine similarity to {result.reference} per layer"),
                    fig_ref(
                        f"shift_relative_l2_{pos}", f"Relative L2 distance to {result.reference} per layer"
                    ),
                ],
            )
        )
    if result.direction_layers:
        idx = [result.layers.index(layer) for layer in result.direction_layers]
        xs = [float(layer) for layer in result.direction_layers]
        proj = {v: [float(result.mean("proj", "last", v)[i]) for i in idx] for v in result.variants}
        figs["projection"] = line_curves(
            xs,
            proj,
            title="projection on the direction (last token)",
            xlabel="layer",
            ylabel="mean projection",
        )
        rows = [
            {"layer": layer, **{v: proj[v][k] for v in result.variants}}
            for k, layer in enumerate(result.direction_layers)
        ]
        sections.append(
            Section(
                "Projection on the direction",
                "Mean projection of last-token states on the unit direction of each layer, per variant.",
                tables=[ReportTable(rows)],
                figures=[fig_ref("projection", "Projection on the direction per layer")],
            )
        )
    scatter_layers = sorted({int(k.rsplit(".", 1)[1]) for k in result.scatter})
    for layer in scatter_layers:
        groups = {
            v: result.scatter[f"{v}.{layer}"] for v in result.variants if f"{v}.{layer}" in result.scatter
        }
        figs[f"pca_layer{layer}"] = pca_scatter(groups, title=f"last-token states, layer {layer}")
    if scatter_layers:
        sections.append(
            Section(
                "PCA of last-token states",
                "First two principal components of the last-token states of all variants together.",
                figures=[fig_ref(f"pca_layer{layer}", f"PCA, layer {layer}") for layer in scatter_layers],
            )
        )
    return sections, figs


def directions_page(result: DirectionResult, shift: ShiftResult | None = None) -> Page:
    """Sections and figures of a refusal-direction analysis (plus variant projections when measured)."""
    x = [float(layer) for layer in result.layers]
    figs: dict[str, Figure] = {
        "probe_accuracy": line_curves(
            x,
            {
                "logistic probe": [result.probe_accuracy[layer] for layer in result.layers],
                "difference of means": [result.mean_diff_accuracy[layer] for layer in result.layers],
            },
            title="held-out accuracy, harmful vs harmless",
            xlabel="layer",
            ylabel="accuracy",
        )
    }
    c = result.counts
    sections = [
        Section(
            "Refusal direction and probes",
            f"Model `{result.meta.get('model', '')}`; {c.get('harmful_train', 0)}+{c.get('harmful_test', 0)} "
            f"harmful and {c.get('harmless_train', 0)}+{c.get('harmless_test', 0)} harmless prompts "
            "(train+held-out). Direction = mean(harmful) - mean(harmless) of last-token states (train split); "
            "accuracies on the held-out split; projections are held-out means on the unit direction.",
            tables=[ReportTable(result.rows())],
            figures=[fig_ref("probe_accuracy", "Held-out probe accuracy per layer")],
        )
    ]
    if shift is not None and shift.direction_layers:
        curves = {
            "harmful (text)": [result.harmful_projection[layer] for layer in shift.direction_layers],
            "harmless (text)": [result.harmless_projection[layer] for layer in shift.direction_layers],
        }
        rows = []
        for layer in shift.direction_layers:
            i = shift.layers.index(layer)
            gap = result.harmful_projection[layer] - result.harmless_projection[layer]
            row: dict[str, Any] = {"layer": layer}
            ref = float(shift.mean("proj", "last", shift.reference)[i])
            for v in shift.variants:
                val = float(shift.mean("proj", "last", v)[i])
                curves.setdefault(f"{v} (queries)", []).append(val)
                if v != shift.reference:
                    row[f"{v} - {shift.reference}"] = val - ref
                    row[f"{v} (share of gap)"] = (val - ref) / gap if gap else None
            rows.append(row)
        xs = [float(layer) for layer in shift.direction_layers]
        figs["direction_projection"] = line_curves(
            xs, curves, title="projection on the refusal direction", xlabel="layer", ylabel="mean projection"
        )
        sections.append(
            Section(
                "How far the variants move along the refusal direction",
                f"{shift.count} queries under each variant; shift along the unit direction relative to the "
                f"{shift.reference} variant, also as a share of the harmful-harmless gap (negative: toward "
                "harmless, i.e. away from refusal).",
                tables=[ReportTable(rows)],
                figures=[fig_ref("direction_projection", "Projection on the refusal direction per layer")],
            )
        )
    return sections, figs


def lens_page(result: LensResult) -> Page:
    """Sections and figures of the logit-lens safety-layer localisation."""
    x = [float(j) for j in range(result.num_layers)]
    figs: dict[str, Figure] = {
        "refusal_mass": line_curves(
            x,
            {v: result.mean("mass", v).tolist() for v in result.variants},
            title="refusal-token probability (logit lens, last token)",
            xlabel="layer",
            ylabel="mean probability",
        ),
        "activation_share": line_curves(
            x,
            {
                v: (result.sums[f"activation.{v}"][:-1] / max(result.count, 1)).tolist()
                for v in result.variants
            },
            title=f"share of queries whose safety activation layer is j (top-{result.top_k})",
            xlabel="layer",
            ylabel="share of queries",
        ),
    }
    tokens = ", ".join(repr(t) for t in list(result.refusal_tokens.values())[:24])
    per_layer = []
    for j in range(result.num_layers):
        row: dict[str, Any] = {"layer": j}
        for v in result.variants:
            row[f"{v} mass"] = float(result.mean("mass", v)[j])
            row[f"{v} top-{result.top_k}"] = float(result.mean("topk", v)[j])
            row[f"{v} rank"] = float(result.mean("rank", v)[j])
        per_layer.append(row)
    sections = [
        Section(
            "Safety layers (logit lens)",
            f"Model `{result.meta.get('model', '')}`, {result.count} queries per variant. Refusal tokens: {tokens}. "
            f"Activation layer: first layer where a refusal token enters the top-{result.top_k} of "
            "P_j - P_{j-1}; end layer: first layer where a refusal token is the top-1 token.",
            tables=[
                ReportTable(result.rows(), caption="Per variant"),
                ReportTable(per_layer, caption="Per layer"),
            ],
            figures=[
                fig_ref("refusal_mass", "Refusal-token probability per layer"),
                fig_ref("activation_share", "Distribution of the safety activation layer"),
            ],
        )
    ]
    if result.caption_count:
        cos = (result.caption_cosine / result.caption_count).tolist()
        figs["image_caption_cosine"] = line_curves(
            x,
            {"image span vs caption text": cos},
            title="image-span vs caption mean state",
            xlabel="layer",
            ylabel="mean cosine",
        )
        sections.append(
            Section(
                "Image vs caption states",
                f"Per layer, mean over {result.caption_count} queries of the cosine between the mean state over "
                "the image span (image variant) and the mean state of the caption alone run as text.",
                tables=[ReportTable([{"layer": j, "cosine": c} for j, c in enumerate(cos)])],
                figures=[fig_ref("image_caption_cosine", "Image vs caption cosine per layer")],
            )
        )
    return sections, figs


def weights_page(result: WeightDiffResult) -> Page:
    """Sections and figures of a weight-change analysis."""
    figs: dict[str, Figure] = {}
    sections = [
        Section(
            "Weight changes",
            f"A = `{result.meta.get('checkpoint_a')}`, B = `{result.meta.get('checkpoint_b')}`; "
            f"{len(result.rows)} tensors compared ({result.meta.get('bytes_read', 0) / 1e6:.1f} MB read), "
            f"{len(result.skipped_a)} tensors of A and {len(result.skipped_b)} of B without a counterpart. "
            "Relative change = ||A - B||_F / ||A||_F.",
            tables=[
                ReportTable(
                    [{k: r[k] for k in ("name", "shape", "diff", "relative")} for r in result.top(10)],
                    caption="Largest relative changes",
                )
            ],
        )
    ]
    for k, comp in enumerate(result.components()):
        modules, layers, mat = result.matrix(comp)
        name = f"weights_heatmap_{k}"
        figs[name] = heatmap(
            mat,
            modules,
            [str(x) for x in layers],
            title=f"relative change: {comp or 'layers'}",
            xlabel="layer",
            colorbar_label="||A-B|| / ||A||",
        )
        per_layer = result.per_layer(comp)
        lname = f"weights_per_layer_{k}"
        figs[lname] = line_curves(
            [float(x) for x in per_layer],
            {comp or "layers": list(per_layer.values())},
            title="relative change per layer",
            xlabel="layer",
            ylabel="||A-B|| / ||A||",
        )
        sections.append(
            Section(
                f"Per module and layer: {comp or 'layers'}",
                tables=[ReportTable([{"layer": x, "relative": v} for x, v in per_layer.items()])],
                figures=[
                    fig_ref(name, f"Relative change per module and layer ({comp})"),
                    fig_ref(lname, f"Relative change per layer ({comp})"),
                ],
            )
        )
    other = [r for r in result.rows if r["layer"] is None]
    if other:
        sections.append(
            Section(
                "Tensors outside numbered layers",
                tables=[ReportTable([{k: r[k] for k in ("name", "shape", "relative")} for r in other])],
            )
        )
    return sections, figs
