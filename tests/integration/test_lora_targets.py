"""The library's LoRA targets: the default projection names and the regex that puts adapters on the language
model only."""

from __future__ import annotations

import re

import pytest
from torch import nn

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training import LLM_PROJECTIONS, LoraSettings, lora_target_regex


def test_default_targets_are_the_llm_projections() -> None:
    assert LLM_PROJECTIONS == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert LoraSettings.model_validate({}).targets == list(LLM_PROJECTIONS)


@pytest.mark.parametrize(
    ("family", "llm_module"),
    [("llava", "model.language_model."), ("smolvlm", "model.text_model."), ("causal_lm", "model.")],
)
def test_lora_target_regex_names_only_the_language_models_projections(
    tiny_bundle, family: str, llm_module: str
) -> None:
    model = tiny_bundle(family).model
    pattern = re.compile(lora_target_regex(model))
    linear = [name for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    chosen = [name for name in linear if pattern.fullmatch(name)]  # peft matches whole module names
    expected = [
        name
        for name in linear
        if name.startswith(llm_module + "layers.") and name.rsplit(".", 1)[-1] in LLM_PROJECTIONS
    ]
    assert chosen == expected and chosen
    assert not any(part in name for name in chosen for part in ("vision", "projector", "connector"))


def test_lora_target_regex_takes_other_targets_and_refuses_unknown_ones(tiny_bundle) -> None:
    model = tiny_bundle("llava").model
    names = [name for name, _ in model.named_modules() if re.fullmatch(lora_target_regex(model, ["q_proj"]), name)]
    assert names and all(name.endswith(".self_attn.q_proj") for name in names)
    with pytest.raises(ConfigError, match=r"no nn.Linear named one of \['nope'\]"):
        lora_target_regex(model, ["nope"])
