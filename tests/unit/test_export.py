"""export: the run's own fields cannot be overwritten by the row's, a spreadsheet never
runs a cell as a formula, and a file is written whole or not at all."""

import csv
import io
import json

import pytest

from common.errors import WavefarmError
from orchestrator import export

FAILED_RUN = {
    "run_id": 7, "line": 3, "status": "failed", "outcome": None, "end_reason": "step grade failed after 3 attempt(s)",
    # A hostile row: columns named like the run's own fields, and formulas in its cells.
    "row": {"run_id": "999", "status": "completed", "end_reason": "", "title": "=HYPERLINK(\"http://x\",\"ok\")",
            "note": "@SUM(A1:A9)", "minus": "-2+3", "plain": "hello"},
    "outputs": {"grade": {"verdict": "=cmd|' /C calc'!A0"}, "extract": "+1 great posting"},
}


def as_csv(records, **kw) -> list[dict]:
    stream = io.StringIO()
    export.write(records, ["extract", "grade", "never_ran"], "csv", stream, **kw)
    return list(csv.DictReader(io.StringIO(stream.getvalue())))


def test_the_runs_own_fields_stay_its_own_whatever_the_row_is_called():
    (row,) = as_csv([FAILED_RUN])
    assert (row["run_id"], row["status"], row["line"]) == ("7", "failed", "3")
    assert row["input.status"] == "completed" and row["input.run_id"] == "999"
    assert row["output.never_ran"] == ""


def test_cells_a_spreadsheet_would_run_are_written_as_text():
    (row,) = as_csv([FAILED_RUN])
    assert row["input.title"] == "'=HYPERLINK(\"http://x\",\"ok\")"
    assert row["input.note"] == "'@SUM(A1:A9)" and row["input.minus"] == "'-2+3"
    assert row["output.extract"] == "'+1 great posting"
    assert json.loads(row["output.grade"]) == {"verdict": "=cmd|' /C calc'!A0"}  # JSON starts with {: safe
    assert row["input.plain"] == "hello"
    (raw,) = as_csv([FAILED_RUN], allow_formulas=True)
    assert raw["input.title"].startswith("=HYPERLINK")


def test_jsonl_keeps_every_value_as_it_is():
    stream = io.StringIO()
    assert export.write([FAILED_RUN], [], "jsonl", stream) == 1
    assert json.loads(stream.getvalue()) == FAILED_RUN


def test_a_file_is_written_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("the last good export\n")
    with pytest.raises(RuntimeError):
        with export.destination(target) as stream:
            stream.write("half of a new one")
            raise RuntimeError("the database went away")
    assert target.read_text() == "the last good export\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary file left behind
    with export.destination(target) as stream:
        stream.write("new\n")
    assert target.read_text() == "new\n"


def test_a_folder_or_a_missing_folder_is_said_plainly(tmp_path):
    with pytest.raises(WavefarmError, match="that is a folder"):
        with export.destination(tmp_path):
            pass
    with pytest.raises(WavefarmError, match="does not exist"):
        with export.destination(tmp_path / "nowhere" / "out.csv"):
            pass
