"""Tests of the report: model selection, statistics, the paired test and the written files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from lightning_ttn.report import main, paper_table, select_configurations, write_report
from lightning_ttn.sweep_config import dump_config, parse_config

SWEEP = {
    "output_dir": "unused",
    "source": "embedded",
    "sizes": [10, 20],
    "runs": 3,
    "families": {
        "3D": [{"name": "a", "channels": [4, 14], "lr": 0.01},
               {"name": "b", "channels": [6, 16], "lr": 0.01}],
        "3DTTN": [{"name": "c", "channels": [4, 14], "lr": 0.01}],
    },
}
# (family, size, candidate) -> [(best_val_acc, test_acc) of runs 0, 1, 2]
RESULTS = {
    ("3D", 10, "a"): [(0.5, 0.90), (0.6, 0.90), (0.7, 0.90)],  # mean val 0.6: not selected
    ("3D", 10, "b"): [(0.7, 0.40), (0.8, 0.50), (0.9, 0.45)],  # mean val 0.8: selected
    ("3DTTN", 10, "c"): [(0.6, 0.55), (0.6, 0.62), (0.6, 0.58)],
    ("3D", 20, "a"): [(0.5, 0.70)],  # only run 0 of the 3D family at 20 videos
    ("3DTTN", 20, "c"): [(0.6, 0.75), (0.6, 0.80)],
}


def write_results(directory: Path) -> None:
    """A hand-made, partial results directory, stray temp and lock files included."""
    runs = directory / "runs"
    runs.mkdir(parents=True)
    (directory / "sweep.json").write_text(dump_config(parse_config(SWEEP))[1])
    for (family, size, name), values in RESULTS.items():
        for run, (val_acc, test_acc) in enumerate(values):
            run_id = f"{family}_n{size:04d}_{name}_r{run:03d}"
            record = {"run_id": run_id, "family": family, "candidate": {"name": name},
                      "train_videos": size, "run": run, "best_val_acc": val_acc,
                      "test_acc": test_acc, "num_parameters": 1000 + len(name)}
            (runs / f"{run_id}.json").write_text(json.dumps(record))
            (runs / f"{run_id}.lock").write_text("")
    (runs / ".3D_n0020_a_r001.json.x1y2.tmp").write_text('{"run_id": "3D_n0')


def read_csv(path: Path) -> dict[int, dict[str, str]]:
    with path.open() as f:
        return {int(row["train_videos"]): row for row in csv.DictReader(f)}


def test_model_selection_statistics_and_paired_test(tmp_path: Path) -> None:
    write_results(tmp_path)
    markdown = write_report(tmp_path, tmp_path / "report")
    rows = read_csv(tmp_path / "report" / "table.csv")

    row = rows[10]
    assert row["3D_config"] == "b" and row["3DTTN_config"] == "c"
    selected_3d, selected_ttn = [0.40, 0.50, 0.45], [0.55, 0.62, 0.58]
    assert float(row["3D_mean_acc"]) == pytest.approx(0.45)
    assert float(row["3D_stderr"]) == pytest.approx(np.std(selected_3d, ddof=1) / math.sqrt(3))
    assert float(row["3DTTN_mean_acc"]) == pytest.approx(np.mean(selected_ttn))
    assert float(row["3DTTN_stderr"]) == pytest.approx(0.0351188 / math.sqrt(3), rel=1e-5)
    assert int(row["3D_runs"]) == 3 and int(row["paired_runs"]) == 3
    assert float(row["p_value"]) == pytest.approx(stats.ttest_rel(selected_3d, selected_ttn).pvalue)
    assert row["significant"] == "True"
    assert float(row["paper_3D_mean_acc"]) == 0.374

    row = rows[20]  # one 3D run: no standard error, one paired run: no test
    assert float(row["3D_mean_acc"]) == pytest.approx(0.70)
    assert row["3D_stderr"] == "nan" and row["p_value"] == "nan" and row["significant"] == "False"
    assert int(row["paired_runs"]) == 1

    assert "3D 10 videos a: 0 of 3" not in markdown
    assert "3D 20 videos a: 2 of 3 runs missing (runs 1, 2)" in markdown
    assert "3D 20 videos b: 3 of 3 runs missing (runs 0, 1, 2)" in markdown
    assert "3DTTN 20 videos c: 1 of 3 runs missing (runs 2)" in markdown
    assert "scipy.stats.ttest_rel" in markdown and "p < 0.05" in markdown
    assert (tmp_path / "report" / "figure.png").read_bytes()[:4] == b"\x89PNG"


def test_report_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_results(tmp_path)
    main([str(tmp_path)])
    assert "| 10 |" in capsys.readouterr().out
    assert {"table.md", "table.csv", "figure.png"} <= {p.name for p in tmp_path.iterdir()}


def test_report_rejects_a_directory_without_results(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path)])


def test_paper_table_is_table2() -> None:
    table = paper_table()
    assert sorted(table) == [10, 20, 30, 40, 50, 100, 500, 1000, 2000, 5000]
    assert table[10] == {"3D_mean_acc": 0.374, "3D_stderr": 0.0122, "3D_params": 375668,
                         "3DTTN_mean_acc": 0.477, "3DTTN_stderr": 0.0139, "3DTTN_params": 444966}
    assert table[5000]["3D_mean_acc"] == 0.994 and table[1000]["3DTTN_params"] == 254058


def test_candidates_are_compared_on_the_runs_they_share() -> None:
    def record(name: str, run: int, val_acc: float) -> dict:
        return {"family": "3D", "train_videos": 10, "candidate": {"name": name}, "run": run,
                "best_val_acc": val_acc, "test_acc": 0.5, "num_parameters": 1}

    # "a" looks better over its own two runs (0.7) but is worse than "b" on the shared run 0.
    records = [record("a", 0, 0.5), record("a", 1, 0.9), record("b", 0, 0.6)]
    selection = select_configurations(records)[("3D", 10)]
    assert (selection.candidate, selection.mean_val_acc) == ("b", 0.6)
    assert select_configurations(records[:2])[("3D", 10)].mean_val_acc == pytest.approx(0.7)
