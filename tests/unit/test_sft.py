"""SFT / DPO configs: YAML loading, overrides, errors naming the broken field, the shipped example configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlsafe.core.errors import ConfigError
from vlsafe.methods.training.baseline import load_config
from vlsafe.methods.training.dpo import DPOConfig
from vlsafe.methods.training.sft import SFTConfig

ROOT = Path(__file__).resolve().parents[2]


def test_yaml_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: m\noutput_dir: out\ndata:\n  - {format: vlguard, path: d.json}\nmax_steps: 7\n")
    sft = load_config(SFTConfig, cfg, max_steps=3, output_dir=None)
    assert sft.max_steps == 3 and sft.output_dir == Path("out") and sft.stage == "llm_lora"
    assert sft.data[0].format == "vlguard" and sft.mix is None and sft.lr == 2e-4
    assert (
        load_config(
            DPOConfig, {"model": "m", "output_dir": "o", "data": [{"format": "spavl", "path": "p"}]}
        ).beta
        == 0.1
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"data": []}, "data: List should have at least 1 item"),
        ({"data": [{"format": "vlguard"}]}, "needs a path"),
        ({"data": [{"format": "synthetic_vl"}]}, "needs n_images"),
        ({"data": [{"format": "coco", "path": "x"}]}, "data.0.format"),
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"mix": {"vl_data": [{"format": "synthetic_vl", "n_images": 2}], "ratio": 1.5}}, "mix.ratio"),
    ],
)
def test_config_errors_name_the_field(data: dict, message: str) -> None:
    base = {"model": "m", "output_dir": "o", "data": [{"format": "vlguard", "path": "d.json"}]}
    with pytest.raises(ConfigError, match="invalid SFTConfig") as err:
        load_config(SFTConfig, base | data)
    assert message in str(err.value)


def test_missing_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(SFTConfig, tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(SFTConfig, tmp_path / "b.yaml")


@pytest.mark.parametrize(
    "path", sorted((ROOT / "configs").glob("sft_*.yaml")) + sorted((ROOT / "configs").glob("dpo_*.yaml"))
)
def test_shipped_configs_validate(path: Path) -> None:
    cls = SFTConfig if path.name.startswith("sft_") else DPOConfig
    assert load_config(cls, path).max_steps > 0


def test_organism_baseline_configs(tmp_path: Path) -> None:
    from vlsafe_organism.recipes import organism_baseline_configs

    data = {"vlguard": tmp_path / "vg.json", "spavl": tmp_path / "sp.json"}
    cfgs = organism_baseline_configs(tmp_path, data, max_steps=10, lr=1e-4)
    assert sorted(cfgs) == ["dpo", "joint", "sft"]
    assert isinstance(cfgs["dpo"], DPOConfig) and cfgs["dpo"].data[0].format == "spavl"
    assert (
        cfgs["joint"].model == "organism:vlm"
        and cfgs["joint"].mix is not None
        and cfgs["joint"].mix.ratio == 0.1
    )
    assert (
        {c.lr for c in cfgs.values()} == {1e-4}
        and cfgs["sft"].probe is not None
        and cfgs["sft"].probe.every == 2
    )
