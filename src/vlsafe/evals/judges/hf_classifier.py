"""Local Hugging Face classifier judge (LlamaGuard-style or HarmBench-classifier format).

Formats:

- ``"llamaguard"``: the tokenizer's own chat template is applied to the conversation
  ``[user: prompt, assistant: response]`` (LlamaGuard models ship their moderation instructions in
  that template); the model generates ``safe`` or ``unsafe\\nS1,S3``.
- ``"harmbench"``: the published HarmBench classifier prompt (``[INST] <<SYS>> ...``) with the
  record's prompt as behaviour (and ``context`` when the record has one); the model answers
  ``Yes`` (unsafe) or ``No``.

Models load from an HF id or a local directory with ``AutoModelForCausalLM`` (safetensors only;
``trust_remote_code`` only when asked). Generation is greedy; unreadable answers become error
verdicts with the raw text kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from vlsafe.core.errors import ConfigError, ModelLoadError
from vlsafe.evals.judges.base import JUDGES, Judge, Verdict, template_hash
from vlsafe.evals.judges.templates import (
    HARMBENCH_CLS_PROMPT,
    HARMBENCH_CLS_PROMPT_CONTEXTUAL,
    parse_harmbench,
    parse_llamaguard,
)

__all__ = ["HFClassifierJudge"]

Format = Literal["llamaguard", "harmbench"]


class HFClassifierJudge(Judge):
    """Judge with a local causal-LM safety classifier.

    Args:
        model: HF id or local directory of the classifier.
        format: ``"llamaguard"`` or ``"harmbench"``.
        device: torch device string.
        dtype: torch dtype name (``"bfloat16"``) or ``None`` for the checkpoint default.
        batch_size: records per generate call.
        max_new_tokens: defaults to 10 (llamaguard) / 1 (harmbench).
        max_input_tokens: inputs are truncated from the left to this many tokens.
        trust_remote_code: passed to transformers; only set it for code you trust.
        model_obj, tokenizer: an already loaded model and tokenizer (skip loading).
    """

    name = "hf-classifier"
    version = "1"

    def __init__(
        self,
        model: str | Path | None = None,
        format: Format = "llamaguard",
        device: str = "cpu",
        dtype: str | None = None,
        batch_size: int = 8,
        max_new_tokens: int | None = None,
        max_input_tokens: int = 4096,
        trust_remote_code: bool = False,
        model_obj: Any = None,
        tokenizer: Any = None,
    ) -> None:
        if format not in ("llamaguard", "harmbench"):
            raise ConfigError(f"hf-classifier format={format!r} must be 'llamaguard' or 'harmbench'")
        if model is None and model_obj is None:
            raise ConfigError("hf-classifier needs `model` (an HF id or local path) or a loaded `model_obj`")
        if batch_size < 1:
            raise ConfigError(f"hf-classifier batch_size={batch_size} must be >= 1")
        self.model_ref = str(model) if model is not None else getattr(model_obj, "name_or_path", "in-memory")
        self.format: Format = format
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens or (10 if format == "llamaguard" else 1)
        self.max_input_tokens = max_input_tokens
        self.trust_remote_code = trust_remote_code
        self._model = model_obj
        self._tokenizer = tokenizer
        self.prompt_hash = ""  # set once the tokenizer is known (llamaguard hashes its chat template)
        if format == "harmbench":
            self.prompt_hash = template_hash(HARMBENCH_CLS_PROMPT, HARMBENCH_CLS_PROMPT_CONTEXTUAL)
        elif tokenizer is not None:
            self.prompt_hash = template_hash(str(getattr(tokenizer, "chat_template", None)))

    def identity_fields(self) -> dict[str, Any]:
        return {
            "kind": "hf-classifier",
            "model": self.model_ref,
            "format": self.format,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "max_input_tokens": self.max_input_tokens,
        }

    def identity(self) -> dict[str, Any]:
        self._ensure_loaded()  # the llamaguard prompt hash is the tokenizer's chat template
        return super().identity()

    def _ensure_loaded(self) -> None:
        if self._model is not None and self._tokenizer is not None:
            if not self.prompt_hash:
                self.prompt_hash = template_hash(str(getattr(self._tokenizer, "chat_template", None)))
            return

        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
        try:
            if self._tokenizer is None:
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_ref, **kwargs)
            if self._model is None:
                if self.dtype is not None:
                    kwargs["dtype"] = getattr(torch, self.dtype)
                self._model = AutoModelForCausalLM.from_pretrained(
                    self.model_ref, use_safetensors=True, **kwargs
                )
                self._model.to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load classifier judge {self.model_ref!r}: {exc}") from exc
        if not self.prompt_hash:
            self.prompt_hash = template_hash(str(getattr(self._tokenizer, "chat_template", None)))

    def build_prompt(self, record: dict[str, Any]) -> str:
        """Return the classifier input text for one record."""
        if self.format == "harmbench":
            context = record.get("context")
            if context:
                return HARMBENCH_CLS_PROMPT_CONTEXTUAL.format(
                    context=context, behavior=record["prompt"], generation=record["response"]
                )
            return HARMBENCH_CLS_PROMPT.format(behavior=record["prompt"], generation=record["response"])
        tok = self._tokenizer
        if getattr(tok, "chat_template", None) is None:
            raise ConfigError(
                f"classifier {self.model_ref!r} has no chat template; format='llamaguard' needs one "
                "(use format='harmbench' or a LlamaGuard checkpoint)"
            )
        conv = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
        return tok.apply_chat_template(conv, tokenize=False)

    def _generate(self, prompts: list[str]) -> list[str]:
        """Greedy generation of ``max_new_tokens`` for each prompt; returns the decoded new text."""

        tok, model = self._tokenizer, self._model
        tok.padding_side = "left"
        tok.truncation_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        enc = tok(
            prompts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.max_input_tokens,
            add_special_tokens=self.format == "harmbench",
        ).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        return tok.batch_decode(new, skip_special_tokens=True)

    def _parse(self, record: dict[str, Any], text: str) -> Verdict:
        try:
            parsed = parse_harmbench(text) if self.format == "harmbench" else parse_llamaguard(text)
        except ValueError as exc:
            return self.verdict(record, error=f"unparseable classifier output: {exc}", raw=text)
        raw = {"text": text, **{k: v for k, v in parsed.items() if k != "unsafe"}}
        return self.verdict(record, unsafe=parsed["unsafe"], raw=raw)

    def judge(self, records: list[dict[str, Any]]) -> list[Verdict]:  # type: ignore[override]
        self._ensure_loaded()  # load first: the prompt hash depends on the tokenizer
        return super().judge(records)

    def _judge_valid(self, records: list[dict[str, Any]]) -> list[Verdict]:
        self._ensure_loaded()
        out: list[Verdict] = []
        starts = range(0, len(records), self.batch_size)
        for s in tqdm(starts, desc=f"judge {self.name}", disable=len(starts) < 2):
            chunk = records[s : s + self.batch_size]
            texts = self._generate([self.build_prompt(r) for r in chunk])
            out.extend(self._parse(r, t) for r, t in zip(chunk, texts, strict=True))
        return out


JUDGES.register("hf-classifier", HFClassifierJudge)
