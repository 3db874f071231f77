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


def test_lora_layers_restrict_the_adapters_to_those_decoder_layers(tiny_dir) -> None:
    from vlsafe.methods.training import apply_stage
    from vlsafe.models import load_model

    model = load_model(tiny_dir("llava"), dtype="float32").model  # its own copy: peft adds adapters in place
    n_layers = model.config.text_config.num_hidden_layers
    assert n_layers >= 2
    names = [n for n, _ in model.named_modules() if re.fullmatch(lora_target_regex(model, layers=[n_layers - 1]), n)]
    assert len(names) == len(LLM_PROJECTIONS)
    assert all(f".layers.{n_layers - 1}." in n and "vision" not in n for n in names)
    with pytest.raises(ConfigError, match=rf"lora.layers \[{n_layers}\] are not decoder layers .*0-{n_layers - 1}"):
        lora_target_regex(model, layers=[0, n_layers])
    for bad in ([], [-1], [0, 0]):
        with pytest.raises(ValueError, match="must be distinct decoder layer indices"):
            LoraSettings(layers=bad)
    peft_model = apply_stage(model, "llm_lora", LoraSettings(rank=2, alpha=4.0, layers=[0]))
    trained = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trained and all(".layers.0." in n and "lora_" in n for n in trained)
