"""A positive control of CMRM on any model: a setting whose exact answer is known.

Sample level with each input's own image as img′, alpha 1, one layer, the last position: the vector is
``v = h(text) - h(image)`` of that very input, so the steered state at that layer and position must equal the
text-only state there, to float tolerance, whatever the model. A user runs it before reading any safety figure
of CMRM on their model: a failure means the hooks do not reach the states they are meant to (a family whose
decoder layers or image tokens are wired differently), not that the method fails.

    from vlsafe.methods.cmrm.controls import own_image_control
    results = own_image_control(bundle, queries, images, layers=[0, 12, 23])
    assert all(r.ok for r in results)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vlsafe.core.errors import InputError
from vlsafe.hooks import record_hidden_states
from vlsafe.methods.cmrm.sample import SampleLevelCMRM
from vlsafe.models import ModelBundle, build_inputs

__all__ = ["ControlResult", "own_image_control"]


@dataclass(frozen=True)
class ControlResult:
    """One layer's control.

    ``image_shift``: the largest absolute difference between the image and the text-only state (what the control
    must undo; near zero makes the control trivial); ``residual``: the largest absolute difference between the
    steered and the text-only state; ``scale``: the largest absolute text-only state value; ``ok``: ``residual <=
    rtol * max(1, scale)``.
    """

    layer: int
    image_shift: float
    residual: float
    scale: float
    ok: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _last_states(bundle: ModelBundle, batch: Any, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    with record_hidden_states(bundle, list(layers), "last") as rec, torch.inference_mode():  # type: ignore[arg-type]
        rec.set_batch(batch)
        bundle.model(**batch.inputs)
        return {int(k): v.float() for k, v in rec.result().states.items()}


def own_image_control(
    bundle: ModelBundle,
    queries: Sequence[str],
    images: Sequence[Any],
    layers: Sequence[int] | None = None,
    rtol: float = 1e-4,
) -> list[ControlResult]:
    """Run the own-image control (module docstring) at each of ``layers`` (default: the first, the middle and
    the last decoder layer) on ``queries`` with their ``images`` (one batch).

    Raises:
        InputError: no queries, a query without its image, or a layer outside the model.
    """
    if not queries or len(queries) != len(images):
        raise InputError(f"own_image_control needs one image per query: {len(queries)} queries, {len(images)} images")
    n = bundle.num_layers
    layers = [0, n // 2, n - 1] if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n]
    if bad:
        raise InputError(f"layers {bad} are outside the model's decoder layers 0..{n - 1}")
    texts, pictures = list(queries), list(images)
    image_batch = build_inputs(bundle, texts, variant="image", images=pictures)
    target = _last_states(bundle, build_inputs(bundle, texts, variant="text"), layers)
    plain = _last_states(bundle, image_batch, layers)
    out = []
    for layer in layers:
        with SampleLevelCMRM(bundle, 1.0, layers=[layer], positions="last", corrupt="image") as cm:
            cm.prepare(texts, pictures)
            got = _last_states(bundle, image_batch, [layer])[layer]
        scale = float(target[layer].abs().max())
        residual = float((got - target[layer]).abs().max())
        shift = float((plain[layer] - target[layer]).abs().max())
        out.append(ControlResult(layer, shift, residual, scale, residual <= rtol * max(1.0, scale)))
    return out
