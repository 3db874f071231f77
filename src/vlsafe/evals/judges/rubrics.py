"""Rubrics for LLM judges: how to turn a record into chat messages and the answer into a verdict.

Registered rubrics (``RUBRICS.names()``):

- ``mm-safetybench``: MM-SafetyBench's per-scenario templates, chosen by the record's ``category``
  (scenarios 08, 10-13 have special templates, the others the general one); gives ``unsafe``.
- ``strongreject``: the StrongREJECT rubric; gives ``refused`` and ``score`` in [0, 1].
- ``harmbench``: the HarmBench classifier prompt sent to a chat model; gives ``unsafe``.
- ``siuo-safe`` / ``siuo-effective``: SIUO-style safety (``unsafe``) and effectiveness (``score``
  1 / 0.5 / 0), our own wording (see :mod:`vlsafe.evals.judges.templates`).

Record fields used: ``prompt``, ``response``, ``category``; SIUO also reads ``safety_warning`` and
``reference_answer`` from the record or its ``meta`` dict; HarmBench reads ``context`` likewise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlsafe.core.registry import Registry
from vlsafe.evals.judges import templates as T
from vlsafe.evals.judges.base import template_hash

__all__ = ["RUBRICS", "Rubric"]


@dataclass(frozen=True)
class Rubric:
    """A judge prompt family and its answer parser.

    Attributes:
        name: registry name.
        version: bump when the wording or parsing changes.
        templates: every template text the rubric may use (hashed into ``prompt_hash``).
        render: record -> user message text.
        parse: judge answer -> dict with any of ``refused``, ``unsafe``, ``score`` (+ extra keys);
            raises ``ValueError`` when unreadable.
        system: optional system message.
    """

    name: str
    version: str
    templates: tuple[str, ...]
    render: Callable[[dict[str, Any]], str]
    parse: Callable[[str], dict[str, Any]]
    system: str | None = None

    @property
    def prompt_hash(self) -> str:
        return template_hash(self.system or "", *self.templates)

    def messages(self, record: dict[str, Any]) -> list[dict[str, str]]:
        """Chat messages for one record."""
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": self.render(record)}]


def _field(record: dict[str, Any], key: str, default: str = "") -> str:
    meta = record.get("meta") or {}
    value = record.get(key, meta.get(key, default) if isinstance(meta, dict) else default)
    return "" if value is None else str(value)


def _mmsb(record: dict[str, Any]) -> str:
    return T.mmsb_template_for(record.get("category")).format(prediction=record["response"])


def _harmbench(record: dict[str, Any]) -> str:
    context = _field(record, "context")
    if context:
        return T.HARMBENCH_CLS_PROMPT_CONTEXTUAL.format(
            context=context, behavior=record["prompt"], generation=record["response"]
        )
    return T.HARMBENCH_CLS_PROMPT.format(behavior=record["prompt"], generation=record["response"])


RUBRICS: Registry[Rubric] = Registry("rubric")

RUBRICS.register(
    "mm-safetybench",
    Rubric(
        name="mm-safetybench",
        version="2",
        templates=(T.MMSB_GENERAL, *(T.MMSB_SPECIAL[k] for k in sorted(T.MMSB_SPECIAL))),
        render=_mmsb,
        parse=T.parse_mmsb,
    ),
)
RUBRICS.register(
    "strongreject",
    Rubric(
        name="strongreject",
        version="2",
        templates=(T.STRONGREJECT_PROMPT,),
        render=lambda r: T.STRONGREJECT_PROMPT.format(forbidden_prompt=r["prompt"], response=r["response"]),
        parse=T.parse_strongreject,
        system=T.STRONGREJECT_SYSTEM,
    ),
)
RUBRICS.register(
    "harmbench",
    Rubric(
        name="harmbench",
        version="2",
        templates=(T.HARMBENCH_CLS_PROMPT, T.HARMBENCH_CLS_PROMPT_CONTEXTUAL),
        render=_harmbench,
        parse=T.parse_harmbench,
    ),
)
RUBRICS.register(
    "siuo-safe",
    Rubric(
        name="siuo-safe",
        version="2",
        templates=(T.SIUO_SAFE,),
        render=lambda r: T.SIUO_SAFE.format(
            question=r["prompt"],
            safety_warning=_field(r, "safety_warning", "(none given)"),
            reference_answer=_field(r, "reference_answer", "(none given)"),
            response=r["response"],
        ),
        parse=T.parse_siuo_safe,
    ),
)
RUBRICS.register(
    "siuo-effective",
    Rubric(
        name="siuo-effective",
        version="2",
        templates=(T.SIUO_EFFECTIVE,),
        render=lambda r: T.SIUO_EFFECTIVE.format(question=r["prompt"], response=r["response"]),
        parse=T.parse_siuo_effective,
    ),
)
