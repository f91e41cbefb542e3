"""The study's reading quotes only numbers that its committed tables hold."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])[+-−]?\d+\.\d+(?![\w.])")


def reading(text: str) -> str:
    """The "## Reading" section of docs/study.md."""
    start = text.index("\n## Reading")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def table_numbers() -> set[str]:
    numbers = set()
    for path in REPO.glob("results/**/table.md"):
        numbers |= {n.lstrip("+-−") for n in NUMBER.findall(path.read_text())}
    return numbers


def test_every_number_the_reading_quotes_is_in_a_committed_table() -> None:
    quoted = {n.replace("−", "-").lstrip("+-") for n in
              NUMBER.findall(reading((REPO / "docs" / "study.md").read_text()))}
    missing = sorted(quoted - table_numbers())
    assert not missing, f"numbers in the reading that no results/**/table.md holds: {missing}"


def test_the_check_catches_a_number_no_table_holds() -> None:
    assert "0.1234567" not in table_numbers()
    assert NUMBER.findall("3D 0.636 vs 3DTTN +0.003 [-0.020, +0.026], 8 runs, lr 5e-7") == [
        "0.636", "+0.003", "-0.020", "+0.026"]
