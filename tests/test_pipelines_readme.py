"""pipelines/README.md's table of the Taobao-MM columns matches the schema module, row for row."""

import re
from pathlib import Path

from muse_tf.contract.feature_spec import TAOBAO_MM
from pipelines.common.raw_schema import RawSchema

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Input: the Taobao-MM columns read"


def _column_rows() -> set[tuple[str, str, str]]:
    """(table, column, type) of every row of the README's column table."""
    section = (ROOT / "pipelines" / "README.md").read_text().split(HEADING, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, f"no table rows under {HEADING!r}"
    found = set()
    for row in rows:
        tables, column, kind, meaning, missing = (cell.strip() for cell in row.strip("|").split("|"))
        assert meaning and missing, f"row without a meaning or a missing-value rule: {row}"
        for table in re.findall(r"`([^`]+)`", tables):
            found.add((table, column.strip("`"), kind))
    return found


def test_every_schema_column_is_in_the_table_and_nothing_else():
    expected = {
        (table, column, kind)
        for table, columns in RawSchema(TAOBAO_MM).table_columns.items()
        for column, kind in columns.items()
    }
    assert _column_rows() == expected


def test_the_data_page_links_the_column_table():
    page = (ROOT / "docs" / "your_data.md").read_text()
    assert "pipelines/README.md#input-the-taobao-mm-columns-read" in page
