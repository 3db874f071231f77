"""Can the organism's frozen vision features answer its synthetic VQA questions?

The organism's VL model reaches only ~0.2-0.45 held-out VQA accuracy within a CPU-sized recipe. This
diagnostic separates "the vision tower cannot see it" from "the VL training has not learned it yet": it
trains small classifiers directly on the frozen DINOv2 patch features, exactly as the organism feeds them to
its projector (last layer, CLS dropped, ``size`` px), one classifier per (example kind, question index),
on ``train``-split renders, and tests them on ``test``-split renders. ``--layer`` reads another DINOv2 layer
(``hidden_states`` index) to compare with the organism's choice. ``--kind`` renders only examples of one
kind (e.g. ``word``), to see how a question type's accuracy grows with the number of training renders;
``--kind pictogram`` renders the harmful-object pictograms instead and trains one classifier of the object's
name (the naming questions' answer; key ``pictogram/0/pictogram``).

* ``flat``: one linear layer on the flattened ``[patches x 384]`` tokens;
* ``mlp``: a per-patch 384 -> 64 GELU map (a small projector) followed by a linear read-out.

Both train full-batch with AdamW (lr 1e-3, weight decay 1e-2) for 300 epochs, seed 0, one thread.
Prints, as its last line, ``{"<kind>/<q>/<type>": {"flat": acc, "mlp": acc, ...}, ...}`` plus the
test-count-weighted means over all classifiers (``mean_flat``, ``mean_mlp``).

Run: ``.venv/bin/python benchmarks/organism_vision_probe.py [--size 112] [--train 3000] [--test 600] [--layer -1]
[--kind word]``
(about 10-20 minutes on one core, most of it the image features).
"""

from __future__ import annotations

import argparse
import collections
import json

import torch

from vlsafe.data.pictograms import make_pictogram_example
from vlsafe.data.scenes import make_example

PICTOGRAM = "pictogram"


@torch.no_grad()
def _features(
    vision, processor, split: str, n: int, layer: int = -1, kind: str | None = None
) -> tuple[list, torch.Tensor]:
    if kind == PICTOGRAM:
        examples = [make_pictogram_example(i, split) for i in range(n)]
    else:
        examples = [make_example(i, split, kind) for i in range(n)]
    out = []
    for i in range(0, n, 50):
        pix = processor([e.image for e in examples[i : i + 50]], return_tensors="pt")["pixel_values"]
        out.append(vision(pix, output_hidden_states=True).hidden_states[layer][:, 1:])
    return examples, torch.cat(out)


def _by_question(examples: list, feats: torch.Tensor) -> dict[tuple[str, int, str], list]:
    rows: dict[tuple[str, int, str], list] = collections.defaultdict(list)
    for ex, x in zip(examples, feats, strict=True):
        if getattr(ex, "obj", None) is not None:  # a pictogram: its name, whatever the layout's questions
            rows[(PICTOGRAM, 0, PICTOGRAM)].append((x, ex.obj))
            continue
        for qi, qa in enumerate(ex.qa):
            rows[(ex.kind, qi, qa.type)].append((x, qa.answer))
    return rows


def _fit(
    kind: str, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, classes: int
) -> float:
    torch.manual_seed(0)
    patches, dim = x.shape[1], x.shape[2]
    if kind == "flat":
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(patches * dim, classes))
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(dim, 64),
            torch.nn.GELU(),
            torch.nn.Flatten(),
            torch.nn.Linear(64 * patches, classes),
        )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float((model(xt).argmax(-1) == yt).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument(
        "--layer", type=int, default=-1, help="hidden_states index (-1: the organism's layer)"
    )
    parser.add_argument("--kind", default=None, help="render only this example kind (default: all kinds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from vlsafe_organism.base import load_base_vision
    from vlsafe_organism.wiring import make_image_processor

    vision = load_base_vision(None).eval()
    processor = make_image_processor(args.size)
    train = _by_question(*_features(vision, processor, "train", args.train, args.layer, args.kind))
    test = _by_question(*_features(vision, processor, "test", args.test, args.layer, args.kind))
    results: dict[str, dict[str, float | int]] = {}
    for key in sorted(train):
        if key not in test:
            continue
        labels = sorted({a for _, a in train[key]} | {a for _, a in test[key]})
        index = {a: i for i, a in enumerate(labels)}
        x = torch.stack([f for f, _ in train[key]])
        y = torch.tensor([index[a] for _, a in train[key]])
        xt = torch.stack([f for f, _ in test[key]])
        yt = torch.tensor([index[a] for _, a in test[key]])
        mu, sd = x.mean((0, 1)), x.std((0, 1)) + 1e-5
        x, xt = (x - mu) / sd, (xt - mu) / sd
        row: dict[str, float | int] = {"n_train": len(y), "n_test": len(yt), "classes": len(labels)}
        for kind in ("flat", "mlp"):
            row[kind] = round(_fit(kind, x, y, xt, yt, len(labels)), 3)
        results["/".join(map(str, key))] = row
        print(key, row, flush=True)
    total = sum(int(r["n_test"]) for r in results.values())
    summary: dict[str, object] = dict(results)
    for kind in ("flat", "mlp"):
        summary[f"mean_{kind}"] = round(
            sum(float(r[kind]) * int(r["n_test"]) for r in results.values()) / total, 3
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
