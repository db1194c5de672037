"""The CSV reader: every whole-file problem raises with a useful message, every record
problem becomes a BadRow at the right line, and the good rows around it still come."""

from __future__ import annotations

import csv
import hashlib
import io
import random
from pathlib import Path

import pytest

from common.errors import CsvFileError
from orchestrator.csv_rows import BadRow, CsvSummary, GoodRow, file_digest, read_rows, row_key


def write(tmp_path: Path, data: bytes, name: str = "in.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read(path: Path, **kw) -> tuple[list[GoodRow], list[BadRow], CsvSummary]:
    summary = CsvSummary(header=[])
    rows = list(read_rows(path, summary=summary, **kw))
    good = [r for r in rows if isinstance(r, GoodRow)]
    bad = [r for r in rows if isinstance(r, BadRow)]
    assert (summary.good, summary.bad) == (len(good), len(bad))
    return good, bad, summary


def test_quotes_commas_and_embedded_newlines_keep_line_numbers(tmp_path: Path) -> None:
    data = (
        b'id,text,n\n'
        b'1,"a, b",x\n'
        b'2,"she said ""hi""",y\n'
        b'3,"two\nlines\nhere",z\n'
        b'4,"crlf\r\ninside",w\n'
        b'5,plain,v\n'
    )
    good, bad, _ = read(write(tmp_path, data))
    assert bad == []
    assert [(r.line, r.values["text"]) for r in good] == [
        (2, "a, b"),
        (3, 'she said "hi"'),
        (4, "two\nlines\nhere"),
        (7, "crlf\r\ninside"),
        (9, "plain"),
    ]


def test_crlf_file_and_bom(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf id , name \r\n1,Ann\r\n2,\xc3\xa9ric \r\n"
    good, bad, summary = read(write(tmp_path, data), required_columns=["id"], key_column="id")
    assert summary.header == ["id", "name"]
    assert bad == []
    assert [r.values for r in good] == [{"id": "1", "name": "Ann"}, {"id": "2", "name": "éric "}]  # values verbatim
    assert [r.key for r in good] == ["col:1", "col:2"]


def test_non_utf8_bytes_in_one_row(tmp_path: Path) -> None:
    data = b"id,title\n1,ok\n2,caf\xe9\n3,also ok\n"
    good, bad, _ = read(write(tmp_path, data))
    assert [r.line for r in good] == [2, 4]
    assert len(bad) == 1 and bad[0].line == 3
    assert "column 'title'" in bad[0].reason and "0xe9" in bad[0].reason
    assert bad[0].raw == "2,caf\\xe9"  # nothing lost, and safe to store as text


def test_missing_required_columns_lists_all(tmp_path: Path) -> None:
    path = write(tmp_path, b"id,title\n1,x\n")
    with pytest.raises(CsvFileError) as e:
        list(read_rows(path, required_columns=["title", "company", "location"]))
    msg = str(e.value)
    assert "'company', 'location'" in msg and "'id', 'title'" in msg and str(path) in msg


def test_key_column_not_in_header(tmp_path: Path) -> None:
    with pytest.raises(CsvFileError, match="key column 'ref' is not in the header"):
        list(read_rows(write(tmp_path, b"id,title\n1,x\n"), key_column="ref"))


def test_wrong_field_counts(tmp_path: Path) -> None:
    data = b"a,b,c,d\n1,2,3,4\n1,2,3,4,5\n1,2,3\n5,6,7,8\n"
    good, bad, _ = read(write(tmp_path, data))
    assert [r.line for r in good] == [2, 5]
    assert [(r.line, r.reason, r.raw) for r in bad] == [
        (3, "5 fields, header has 4", "1,2,3,4,5"),
        (4, "3 fields, header has 4", "1,2,3"),
    ]


def test_blank_and_all_empty_records_are_counted_not_bad(tmp_path: Path) -> None:
    data = b"\n\na,b\n1,2\n\n,\n\r\n3,4\n\n"
    good, bad, summary = read(write(tmp_path, data))
    assert bad == []
    assert [(r.line, r.values["a"]) for r in good] == [(4, "1"), (8, "3")]
    assert summary.empty == 6


def test_duplicate_rows(tmp_path: Path) -> None:
    data = b"a,b\n1,2\n3,4\n1,2\n1,2 \n1,2\n"
    good, bad, summary = read(write(tmp_path, data))
    assert [r.line for r in good] == [2, 3, 5]  # a trailing space is a different record
    assert [(r.line, r.reason) for r in bad] == [(4, "duplicate of line 2"), (6, "duplicate of line 2")]
    assert summary.duplicates == 2


def test_duplicate_and_empty_key_column_values(tmp_path: Path) -> None:
    data = b"id,t\nA1,x\nA2,y\nA1,z\n,w\n"
    good, bad, summary = read(write(tmp_path, data), key_column="id")
    assert [r.key for r in good] == ["col:A1", "col:A2"]
    assert [(r.line, r.reason) for r in bad] == [
        (4, "duplicate of line 2 (same id 'A1')"),
        (5, "key column 'id' is empty"),
    ]
    assert summary.duplicates == 1


def test_oversized_field(tmp_path: Path) -> None:
    data = b"id,body\n1," + b"x" * 101 + b"\n2,short\n3," + "é".encode() * 51 + b"\n"
    good, bad, _ = read(write(tmp_path, data), max_field_bytes=100)
    assert [r.line for r in good] == [3]
    assert [(r.line, r.reason) for r in bad] == [
        (2, "column 'body': 101 bytes, over the 100-byte limit"),
        (4, "column 'body': 102 bytes, over the 100-byte limit"),  # bytes, not characters
    ]


def test_huge_field_reaches_our_check_not_a_csv_crash(tmp_path: Path) -> None:
    # Far over the csv module's default 131,072-character limit.
    data = b'id,body\n1,"' + b"y" * 1_500_000 + b'"\n2,fine\n'
    good, bad, _ = read(write(tmp_path, data))
    assert [r.line for r in good] == [3]
    assert bad[0].reason == "column 'body': 1,500,000 bytes, over the 1,048,576-byte limit"
    assert len(bad[0].raw) < 2_100 and bad[0].raw.endswith("(truncated)")


def test_runaway_quote_does_not_swallow_the_file(tmp_path: Path) -> None:
    # A quote left open mid-file: the csv module's own (raised, but bounded) limit stops it,
    # so memory stays bounded and reading resumes.
    tail = b"".join(b"%d,row\n" % i for i in range(200))
    data = b'id,body\n1,"never closed\n' + tail + b"9999," + b"z" * 2_000 + b"\n"
    good, bad, _ = read(write(tmp_path, data), max_field_bytes=64)
    assert bad[0].line == 2 and bad[0].raw.startswith('1,"never closed\n0,row\n')
    assert bad[0].reason == (
        "a field grew past 1,024 characters, far over the 64-byte limit "
        "(often a quote that is never closed); skipped to the end of line 143"
    )
    # Records after the one where the csv module stopped come through again.
    assert [(r.line, r.values["id"]) for r in good[:1]] == [(144, "141")] and len(good) == 59
    assert bad[-1].line == 203 and "far over the 64-byte limit" in bad[-1].reason


def test_nul_byte(tmp_path: Path) -> None:
    data = b"a,b\n1,x\x00y\n2,ok\n"
    good, bad, _ = read(write(tmp_path, data))
    assert [r.line for r in good] == [3]
    assert bad[0].line == 2 and bad[0].reason == "column 'b': contains a NUL byte (character 2)"
    assert bad[0].raw == "1,x\\x00y"


def test_unterminated_quote_at_end(tmp_path: Path) -> None:
    data = b'a,b\n1,2\n3,"open\nstill open\n'
    good, bad, summary = read(write(tmp_path, data))
    assert [r.line for r in good] == [2]
    assert len(bad) == 1 and bad[0].line == 3
    assert "never closed" in bad[0].reason
    assert bad[0].raw == '3,"open\nstill open'


def test_malformed_quoting_is_reported_and_reading_goes_on(tmp_path: Path) -> None:
    data = b'a,b\n1,"x"y\n2,ok\n'
    good, bad, _ = read(write(tmp_path, data))
    assert [r.line for r in good] == [3]
    assert bad[0].line == 2 and bad[0].reason.startswith("malformed CSV")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"id,name,id\n", "duplicate column name(s): 'id' (columns 1, 3)"),
        (b"id, ,name,\n", "column(s) 2, 4 have no name"),
        (b"id,n\xe9\n", "column 2: byte 0xe9 is not valid UTF-8"),
    ],
)
def test_bad_header(tmp_path: Path, header: bytes, expected: str) -> None:
    with pytest.raises(CsvFileError) as e:
        list(read_rows(write(tmp_path, header + b"1,2,3,4\n")))
    assert expected in str(e.value) and "line 1" in str(e.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", "empty"), (b"\xef\xbb\xbf", "empty"), (b"\n\r\n\n", "no header")],
)
def test_empty_file_and_no_header(tmp_path: Path, data: bytes, expected: str) -> None:
    with pytest.raises(CsvFileError, match=expected):
        list(read_rows(write(tmp_path, data)))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CsvFileError, match="cannot open"):
        list(read_rows(tmp_path / "nope.csv"))
    with pytest.raises(CsvFileError, match="cannot read"):
        file_digest(tmp_path / "nope.csv")


def test_header_only_file(tmp_path: Path) -> None:
    good, bad, summary = read(write(tmp_path, b"a,b\r\n"))
    assert (good, bad, summary.header) == ([], [], ["a", "b"])


def test_errors_raise_on_first_next(tmp_path: Path) -> None:
    rows = read_rows(write(tmp_path, b""))  # a generator: nothing happens yet
    with pytest.raises(CsvFileError):
        next(rows)


def _csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue().encode()


def test_ten_thousand_rows_keys_stable_and_order_blind(tmp_path: Path) -> None:
    rnd = random.Random(7)
    header = ["title", "company", "body"]
    companies = ["Acme", "Initech", "Ünïcode, Ltd"]
    rows = [[f"t{i}", rnd.choice(companies), f'line one\nline "{i}"'] for i in range(10_000)]
    path = write(tmp_path, _csv_bytes(header, rows))
    good, bad, summary = read(path)
    assert (len(good), bad, summary.good) == (10_000, [], 10_000)
    assert good[-1].line == 1 + 2 * 10_000 - 1  # each record spans two lines
    keys = [r.key for r in good]
    assert len(set(keys)) == 10_000
    assert keys == [r.key for r in read(path)[0]]  # same file read twice

    order = [2, 0, 1]  # same records, columns reordered
    reordered = write(tmp_path, _csv_bytes([header[i] for i in order], [[r[i] for i in order] for r in rows]), "b.csv")
    assert keys == [r.key for r in read(reordered)[0]]
    assert keys[0] == row_key({"body": 'line one\nline "0"', "company": rows[0][1], "title": "t0"}, None)


def test_file_digest_stable(tmp_path: Path) -> None:
    a = write(tmp_path, b"a,b\n1,2\n", "a.csv")
    b = write(tmp_path, b"a,b\n1,2\n", "b.csv")
    c = write(tmp_path, b"a,b\n1,3\n", "c.csv")
    assert file_digest(a) == file_digest(b) != file_digest(c)
    assert file_digest(a) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
