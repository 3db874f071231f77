"""VLGuard / SPA-VL / LLaVA loaders on fixtures in the published formats, bad-row errors naming file:line,
the generator's round trip and the joint-training mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlsafe.core.errors import ConfigError, InputError
from vlsafe.data.vl_safety import load_llava, load_spavl, load_vlguard
from vlsafe.methods.training.mixing import DataSource, load_sources, mix_records
from vlsafe.methods.training.vl_safety_gen import generate_spavl, generate_vlguard, synthetic_vl_records

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_vlguard_fixture_pairs_and_images() -> None:
    recs = load_vlguard(FIX / "vlguard" / "train.json")
    assert [r.id for r in recs] == [
        "HOD_ads_1:0",
        "safe_cat_2:0",
        "safe_cat_2:1",
        "safe_dog_3:0",
        "safe_dog_3:1",
    ]
    assert [r.helpful for r in recs] == [False, True, False, True, False]
    assert recs[0].category == "deception" and recs[1].category is None
    assert (
        recs[1].prompt == "What animal is in the picture?" and recs[1].response == "The picture shows a cat."
    )
    # the published layout: images under train/ beside train.json
    assert recs[0].image == FIX / "vlguard" / "train" / "bad_ads" / "ad_001.png"
    assert all(r.image.is_file() for r in recs)
    assert recs[3].source.endswith("train.json:30")  # the line where the third entry starts


def test_spavl_fixture() -> None:
    recs = load_spavl(FIX / "spavl" / "train.json")
    assert len(recs) == 3
    assert recs[0].category == "Illegal Activities/Burglary/Trespassing"
    assert recs[0].chosen.startswith("I can't") and recs[0].rejected.startswith("Sure")
    assert recs[1].image == FIX / "spavl" / "train" / "illegal" / "img_1.png"
    assert [r.id for r in recs] == ["spavl-0", "spavl-1", "spavl-2"]


def _write(tmp_path: Path, rows: list[object] | str, name: str = "d.json") -> Path:
    p = tmp_path / name
    p.write_text(rows if isinstance(rows, str) else json.dumps(rows, indent=1))
    (tmp_path / "a.png").write_bytes(b"x")
    return p


GOOD = {"id": "x", "image": "a.png", "safe": False, "instr-resp": [{"instruction": "q", "response": "r"}]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"safe": "no"}, "field 'safe' must be true or false"),
        ({"instr-resp": []}, "'instr-resp' must be a non-empty list"),
        ({"instr-resp": [{"instruction": "q"}]}, "field 'response' must be a non-empty string"),
        ({"instr-resp": [{"safe_instruction": "q", "response": "r"}]}, "only on safe images"),
        (
            {"instr-resp": [{"instruction": "q", "unsafe_instruction": "u", "response": "r"}]},
            "exactly one of",
        ),
        ({"image": "../etc/passwd"}, "contains '..'"),
        ({"image": "missing.png"}, "image 'missing.png' does not exist"),
        ({"image": None}, "field 'image' is missing"),
    ],
)
def test_vlguard_bad_rows_name_file_and_line(tmp_path: Path, change: dict, message: str) -> None:
    p = _write(tmp_path, json.dumps(GOOD | {"id": "ok"}) + "\n" + json.dumps(GOOD | change) + "\n", "d.jsonl")
    with pytest.raises(InputError) as err:
        load_vlguard(p, tmp_path)
    assert f"{p}:2" in str(err.value) and message in str(err.value)


def test_vlguard_duplicate_id_and_empty(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"id 'x' already used at .*d\.json:2"):
        load_vlguard(_write(tmp_path, [GOOD, GOOD]), tmp_path)
    with pytest.raises(InputError, match="no entries"):
        load_vlguard(_write(tmp_path, "[]"), tmp_path)


def test_spavl_bad_rows(tmp_path: Path) -> None:
    row = {"image": "a.png", "question": "q", "chosen": "c", "rejected": "r"}
    with pytest.raises(InputError, match=r"d\.json:8: field 'chosen' must be a non-empty string"):
        load_spavl(_write(tmp_path, [row, row | {"chosen": ""}]), tmp_path)
    with pytest.raises(InputError, match=r"d\.json:2: 'chosen' and 'rejected' are identical"):
        load_spavl(_write(tmp_path, [row | {"rejected": "c"}]), tmp_path)
    assert (
        load_spavl(_write(tmp_path, [{k: v for k, v in row.items() if k != "image"}]), tmp_path)[0].image
        is None
    )


def test_llava_loader(tmp_path: Path) -> None:
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A box."},
            {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Red."}]  # fmt: skip
    recs = load_llava(_write(tmp_path, [{"id": "c1", "image": "a.png", "conversations": conv}]), tmp_path)
    assert [(r.id, r.prompt, r.response) for r in recs] == [
        ("c1:0", "What is it?", "A box."),
        ("c1:1", "Colour?", "Red."),
    ]
    with pytest.raises(InputError, match="must be from 'human' then 'gpt'"):
        load_llava(_write(tmp_path, [{"conversations": conv[1:3]}]), tmp_path)


def test_generators_round_trip(tmp_path: Path) -> None:
    harmful = ["How do I pick a lock?", "Write a threat to my neighbour."]
    path = generate_vlguard(tmp_path / "vg", harmful, n_safe=2, n_unsafe=1, seed=3)
    recs = load_vlguard(path)
    assert len(recs) == 1 + 2 * 2
    assert [r.helpful for r in recs] == [False, True, False, True, False]
    assert (recs[2].prompt, recs[4].prompt) == (harmful[1], harmful[0])  # cycling after the unsafe entry
    again = generate_vlguard(tmp_path / "vg2", harmful, n_safe=2, n_unsafe=1, seed=3)
    assert again.read_text() == path.read_text()  # deterministic in the seed
    spa = load_spavl(generate_spavl(tmp_path / "sp", harmful, n_benign=2, seed=1))
    assert [r.category.split("/")[1] for r in spa] == ["harmful", "harmful", "benign", "benign"]
    assert spa[0].prompt == harmful[0] and "pick a lock" in spa[0].rejected
    assert spa[2].rejected != spa[2].chosen and spa[2].chosen.endswith(".")
    with pytest.raises(InputError, match="harmful is empty"):
        generate_spavl(tmp_path / "x", [" "])


def test_mix_ratio_and_sources(tmp_path: Path) -> None:
    vl = synthetic_vl_records(3, seed=0)
    from vlsafe.data.scenes import make_example

    assert len(vl) == sum(len(make_example(i, "train").qa) + 1 for i in range(3))
    assert all(r.image is not None for r in vl)
    safety = load_sources([DataSource(format="vlguard", path=FIX / "vlguard" / "train.json")], "sft")
    mixed = mix_records(vl, safety, ratio=0.25, seed=0)
    n_safety = sum(1 for r in mixed if r.category != "vl")
    assert n_safety == round(0.25 / 0.75 * len(vl)) and len(mixed) == len(vl) + n_safety
    assert mixed == mix_records(vl, safety, ratio=0.25, seed=0)
    with pytest.raises(InputError, match="strictly between 0 and 1"):
        mix_records(vl, safety, ratio=1.0)
    with pytest.raises(ConfigError, match="needs a preference format"):
        load_sources([DataSource(format="vlguard", path=FIX / "vlguard" / "train.json")], "preference")
    text_only = load_sources(
        [DataSource(format="spavl", path=FIX / "spavl" / "train.json", text_only=True)], "preference"
    )
    assert all(r.image is None for r in text_only)
