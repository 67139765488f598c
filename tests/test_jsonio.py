"""regpose/jsonio.py: JSON files load as they are; a missing file, invalid JSON and a binary file are one line
naming the file (and where the JSON breaks); garbage collection is restored whatever happens."""
from __future__ import annotations

import gc

import pytest

from regpose.errors import DataError
from regpose.jsonio import non_finite, read_json


def test_reads_json_and_restores_garbage_collection(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"images": [{"id": 1}], "x": [1.5, null]}')
    assert gc.isenabled()
    assert read_json(path) == {"images": [{"id": 1}], "x": [1.5, None]}
    assert gc.isenabled()
    gc.disable()
    try:
        read_json(path)
        assert not gc.isenabled()                  # a caller that had it off keeps it off
    finally:
        gc.enable()


@pytest.mark.parametrize("content, expected", [
    (b'{"images": [1, 2,]}', r"bad\.json: invalid JSON \(.+ at line 1, column 18\)"),
    (b'{"a": 1}\n{"b": 2}', r"bad\.json: invalid JSON \(Extra data at line 2, column 1\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", r"bad\.json: not a text JSON file$"),
    (b"", r"bad\.json: invalid JSON \(Expecting value at line 1, column 1\)"),
])
def test_bad_json_is_one_line_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as info:
        read_json(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__     # no chained traceback
    assert gc.isenabled()


def test_missing_file_names_what_was_expected(tmp_path):
    with pytest.raises(DataError, match=rf"^results file not found: {tmp_path / 'nope.json'}$"):
        read_json(tmp_path / "nope.json", what="results")
    with pytest.raises(DataError, match="annotation file not found"):
        read_json(tmp_path)                                   # a folder is not a file


def test_non_finite_names_null_as_the_user_wrote_it():
    assert non_finite(None) == "null"
    assert non_finite([1.0, None]) == "null"
    assert non_finite(float("nan")) == "NaN or infinity"
    assert non_finite([1.0, float("inf")]) == "NaN or infinity"
