"""The library's LoRA targets: the default projection names and the language-model-only regex for VLMs."""

from __future__ import annotations

import re

import pytest
from torch import nn

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training import LLM_PROJECTIONS, LoraSettings, llm_lora_regex


def test_default_targets_are_the_llm_projections() -> None:
    assert LLM_PROJECTIONS == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert LoraSettings.model_validate({}).targets == list(LLM_PROJECTIONS)


@pytest.mark.parametrize(("family", "llm_module"), [("llava", "language_model"), ("smolvlm", "text_model")])
def test_llm_lora_regex_selects_only_the_language_models_projections(
    tiny_bundle, family: str, llm_module: str
) -> None:
    model = tiny_bundle(family).model
    pattern = re.compile(llm_lora_regex(llm_module=llm_module))
    linear = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    chosen = [name for name in linear if pattern.fullmatch(name)]  # peft matches a regex on the full name
    expected = [
        name
        for name in linear
        if f".{llm_module}." in f".{name}" and name.rsplit(".", 1)[-1] in LLM_PROJECTIONS
    ]
    assert chosen == expected and chosen
    assert not any("vision" in name or "projector" in name or "connector" in name for name in chosen)


def test_llm_lora_regex_escapes_and_needs_targets() -> None:
    assert llm_lora_regex(["q_proj"]) == r".*language_model.*\.(q_proj)"
    assert re.fullmatch(llm_lora_regex(["a.b"]), "model.language_model.layers.0.a.b")
    assert not re.fullmatch(llm_lora_regex(["a.b"]), "model.language_model.layers.0.aXb")
    with pytest.raises(ConfigError, match="at least one"):
        llm_lora_regex([])
