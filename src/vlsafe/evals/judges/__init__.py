"""Judges: turn stored generations (records) into verdicts.

Registered judges (``JUDGES.names()``): ``keyword``, ``hf-classifier``, ``http``. Build one by name
with :func:`build_judge`; judge records with ``judge.judge(records)``; merge verdicts into records
with :func:`attach_verdicts`.
"""

from __future__ import annotations

from typing import Any

from vlsafe.core.errors import ConfigError
from vlsafe.evals.judges.base import (
    JUDGES,
    Judge,
    Verdict,
    attach_verdicts,
    read_verdicts,
    template_hash,
    write_verdicts,
)
from vlsafe.evals.judges.cache import JudgeCache, request_key
from vlsafe.evals.judges.hf_classifier import HFClassifierJudge
from vlsafe.evals.judges.http import HTTPJudge, JudgeRequestError
from vlsafe.evals.judges.keyword import REFUSAL_KEYWORDS, KeywordJudge, normalise_text
from vlsafe.evals.judges.rubrics import RUBRICS, Rubric

__all__ = [
    "JUDGES",
    "REFUSAL_KEYWORDS",
    "RUBRICS",
    "HFClassifierJudge",
    "HTTPJudge",
    "Judge",
    "JudgeCache",
    "JudgeRequestError",
    "KeywordJudge",
    "Rubric",
    "Verdict",
    "attach_verdicts",
    "build_judge",
    "normalise_text",
    "read_verdicts",
    "request_key",
    "template_hash",
    "write_verdicts",
]


def build_judge(name: str, **options: Any) -> Judge:
    """Instantiate the judge registered as ``name`` with keyword ``options``.

    Raises:
        ConfigError: unknown judge name, or an option the judge does not take.
    """

    cls = JUDGES.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for judge {name!r}: {exc}") from None
