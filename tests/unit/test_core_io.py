"""The shared JSON / JSON-lines readers and the atomic writers of vlsafe.core.io."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vlsafe.core.errors import InputError
from vlsafe.core.io import (
    iter_json_rows,
    iter_jsonl,
    read_json,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_iter_jsonl_numbers_physical_lines_and_skips_blanks(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.jsonl", '{"a": 1}\n\n  \n{"a": 2}')
    assert list(iter_jsonl(f)) == [(1, {"a": 1}), (4, {"a": 2})]  # an unterminated last line is fine
    assert read_jsonl(f) == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1}\n{"a": \n{"a": 3}\n', r"a\.jsonl:2: not valid JSON \(.* at column \d+\)"),
        ('{"a": 1}\n[1, 2]\n', r"a\.jsonl:2: expected a JSON object, got list"),
        ('{"a": 1}\n{"b": 2}\n', r"a\.jsonl:2: the object lacks the key\(s\) \['a'\]"),
        ('{"a": 1}\n{"a": 2}\n{"a": \n', r"a\.jsonl:3: not valid JSON"),  # strict: the last line too
    ],
)
def test_iter_jsonl_errors_name_file_line_and_rule(tmp_path: Path, text: str, message: str) -> None:
    f = _write(tmp_path / "a.jsonl", text)
    with pytest.raises(InputError, match=message):
        read_jsonl(f, required=("a",))


def test_missing_file_names_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"training data '.*nope\.jsonl' does not exist"):
        read_jsonl(tmp_path / "nope.jsonl", "training data")
    with pytest.raises(InputError, match=r"results '.*r\.json' does not exist"):
        read_json(tmp_path / "r.json", "results")


def test_torn_tail_drops_only_a_crash_cut_final_line(tmp_path: Path) -> None:
    f = tmp_path / "s.jsonl"
    _write(f, '{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')  # unterminated, unparsable
    assert [r["id"] for r in read_jsonl(f, torn_tail=True)] == ["a", "b"]
    _write(f, '{"id": "a"}\n{"id": "b"}')  # unterminated although it parses: the write may be cut
    assert [r["id"] for r in read_jsonl(f, torn_tail=True)] == ["a"]
    _write(f, '{"id": "a"}\nnot json\n\n \n')  # terminated but malformed final non-blank line
    assert [r["id"] for r in read_jsonl(f, torn_tail=True)] == ["a"]
    _write(f, '{"id": "a"}\n{"x": 1}\n')  # the final line lacks a required key: malformed
    assert [r["id"] for r in read_jsonl(f, torn_tail=True, required=("id",))] == ["a"]
    _write(f, '{"id": "a"}\nnot json\n{"id": "b"}\n')  # a malformed line elsewhere stays an error
    with pytest.raises(InputError, match=r"s\.jsonl:2: not valid JSON"):
        read_jsonl(f, torn_tail=True)
    f.write_bytes(b'{"id": "a"}\n{"id": "\xc3')  # cut inside a multi-byte character
    assert read_jsonl(f, torn_tail=True) == [{"id": "a"}]
    _write(f, "")
    assert read_jsonl(f, torn_tail=True) == []


def test_iter_json_rows_reads_arrays_and_json_lines(tmp_path: Path) -> None:
    array = _write(tmp_path / "d.json", '[\n  {"a": 1},\n\n  {"a": 2}\n]\n')
    assert list(iter_json_rows(array)) == [(2, {"a": 1}), (4, {"a": 2})]
    lines = _write(tmp_path / "d.jsonl", '{"a": 1}\n\n{"a": 2}\n')
    assert list(iter_json_rows(lines)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert list(iter_json_rows(_write(tmp_path / "e.json", "  [ ]  "))) == []
    with pytest.raises(InputError, match=r"b\.json:3: not valid JSON"):
        list(iter_json_rows(_write(tmp_path / "b.json", '[\n{"a": 1},\n{"a": }\n]')))
    with pytest.raises(InputError, match=r"c\.json:2: expected ',' or ']'"):
        list(iter_json_rows(_write(tmp_path / "c.json", '[{"a": 1}\n{"a": 2}]')))
    with pytest.raises(InputError, match=r"n\.json:2: expected a JSON object, got int"):
        list(iter_json_rows(_write(tmp_path / "n.json", '[{"a": 1},\n 3]')))


def test_read_json_names_the_line(tmp_path: Path) -> None:
    assert read_json(_write(tmp_path / "ok.json", '{"a": [1, 2]}')) == {"a": [1, 2]}
    with pytest.raises(InputError, match=r"bad\.json:2: not valid JSON"):
        read_json(_write(tmp_path / "bad.json", '{"a": 1,\n}'))


def test_atomic_writers_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "r.json"
    write_json_atomic(target, {"a": 1, "p": Path("x")}, indent=None)
    assert target.read_text() == '{"a": 1, "p": "x"}\n'
    assert json.loads(target.read_text()) == {"a": 1, "p": "x"}
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    rows = tmp_path / "rows.jsonl"
    write_jsonl_atomic(rows, [{"a": "é"}, {"b": 2}])
    assert rows.read_text(encoding="utf-8") == '{"a": "é"}\n{"b": 2}\n'
    assert read_jsonl(rows) == [{"a": "é"}, {"b": 2}]
    assert sorted(os.listdir(tmp_path)) == ["rows.jsonl", "sub"]
    assert os.listdir(tmp_path / "sub") == ["r.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = _write(tmp_path / "r.json", '{"old": true}')
    with pytest.raises(TypeError):
        write_text_atomic(target, 3)  # type: ignore[arg-type]
    assert target.read_text() == '{"old": true}'
    assert os.listdir(tmp_path) == ["r.json"]


def test_torn_tail_after_an_unterminated_line_tolerates_the_line_before(tmp_path: Path) -> None:
    f = _write(tmp_path / "s.jsonl", '{"id": "a"}\nnot json\n\n{"id": "c", "resp')
    assert read_jsonl(f, torn_tail=True) == [{"id": "a"}]
    with pytest.raises(InputError, match=r"s\.jsonl:2: not valid JSON"):
        read_jsonl(f)
