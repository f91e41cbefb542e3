"""The study's reading quotes only numbers that its committed tables hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])[+-−]?\d+\.\d+(?![\w.])")


READING_SECTIONS = ("## Reading", "### Reading at 500 videos")


def reading(text: str, heading: str = "## Reading") -> str:
    """One section of docs/study.md, from its heading to the next heading of its level or above."""
    start = text.index("\n" + heading + "\n")
    level = heading.index(" ")
    ends = [text.find("\n" + "#" * k + " ", start + 1) for k in range(1, level + 1)]
    return text[start:min((e for e in ends if e != -1), default=None)]


def table_numbers() -> set[str]:
    numbers = set()
    for path in REPO.glob("results/**/table.md"):
        numbers |= {n.lstrip("+-−") for n in NUMBER.findall(path.read_text())}
    return numbers


@pytest.mark.parametrize("heading", READING_SECTIONS)
def test_every_number_the_reading_quotes_is_in_a_committed_table(heading: str) -> None:
    quoted = {n.replace("−", "-").lstrip("+-") for n in
              NUMBER.findall(reading((REPO / "docs" / "study.md").read_text(), heading))}
    missing = sorted(quoted - table_numbers())
    assert not missing, f"numbers in the reading that no results/**/table.md holds: {missing}"


def test_the_check_catches_a_number_no_table_holds() -> None:
    assert "0.1234567" not in table_numbers()
    assert NUMBER.findall("3D 0.636 vs 3DTTN +0.003 [-0.020, +0.026], 8 runs, lr 5e-7") == [
        "0.636", "+0.003", "-0.020", "+0.026"]


def test_a_section_ends_at_the_next_heading_of_its_level_or_above() -> None:
    text = "\n## A\na 0.1\n### B\nb 0.2\n#### C\nc 0.3\n## D\nd 0.4\n"
    assert reading(text, "## A") == "\n## A\na 0.1\n### B\nb 0.2\n#### C\nc 0.3"
    assert reading(text, "### B") == "\n### B\nb 0.2\n#### C\nc 0.3"
