"""Tests of the report: model selection, statistics, the paired test and the written files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from scipy import stats

from lightning_ttn.protocol.paper import paper_table
from lightning_ttn.protocol.report import figure, main, table_rows, write_report
from lightning_ttn.protocol.schema import parse_config
from lightning_ttn.protocol.statistics import holm, select_configurations
from lightning_ttn.protocol.store import dump_config, load_records
from lightning_ttn.training.record import RunRecord, TransformDrift

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
            # The fields of an early record only: later fields must have defaults.
            record = {"run_id": run_id, "family": family, "candidate": {"name": name},
                      "train_videos": size, "run": run, "best_val_acc": val_acc,
                      "test_acc": test_acc, "num_parameters": 1000 + len(name)}
            (runs / f"{run_id}.json").write_text(json.dumps(record))
            (runs / f"{run_id}.lock").write_text("")
    (runs / ".3D_n0020_a_r001.json.x1y2.tmp").write_text('{"run_id": "3D_n0')


def read_csv(path: Path) -> dict[tuple[int, str], dict[str, str]]:
    with path.open() as f:
        return {(int(row["train_videos"]), row["family"]): row for row in csv.DictReader(f)}


def test_model_selection_statistics_and_paired_test(tmp_path: Path) -> None:
    write_results(tmp_path)
    markdown = write_report(tmp_path, tmp_path / "report")
    rows = read_csv(tmp_path / "report" / "table.csv")

    selected_3d, selected_ttn = [0.40, 0.50, 0.45], [0.55, 0.62, 0.58]
    row_3d, row_ttn = rows[(10, "3D")], rows[(10, "3DTTN")]
    assert row_3d["selected"] == "b" and row_ttn["selected"] == "c"
    assert float(row_3d["mean_acc"]) == pytest.approx(0.45)
    assert float(row_3d["stderr"]) == pytest.approx(np.std(selected_3d, ddof=1) / math.sqrt(3))
    assert float(row_ttn["mean_acc"]) == pytest.approx(np.mean(selected_ttn))
    assert float(row_ttn["stderr"]) == pytest.approx(0.0351188 / math.sqrt(3), rel=1e-5)
    assert int(row_3d["runs"]) == 3 and int(row_ttn["paired_runs"]) == 3
    p = stats.ttest_rel(selected_ttn, selected_3d).pvalue
    assert float(row_ttn["p_value"]) == pytest.approx(p)
    assert float(row_ttn["p_holm"]) == pytest.approx(p)  # the only test of the table
    assert float(row_ttn["diff_vs_reference"]) == pytest.approx(np.mean(selected_ttn) - 0.45)
    assert row_ttn["significant"] == "True" and row_3d["p_value"] == "nan"
    assert float(row_3d["paper_mean_acc"]) == 0.374

    row_3d, row_ttn = rows[(20, "3D")], rows[(20, "3DTTN")]  # one 3D run: no stderr, no test
    assert float(row_3d["mean_acc"]) == pytest.approx(0.70)
    assert row_3d["stderr"] == "nan" and row_ttn["p_value"] == "nan"
    assert row_ttn["significant"] == "False" and int(row_ttn["paired_runs"]) == 1

    assert "3D 10 videos a: 0 of 3" not in markdown
    assert "3D 20 videos a: 2 of 3 runs missing (runs 1, 2)" in markdown
    assert "3D 20 videos b: 3 of 3 runs missing (runs 0, 1, 2)" in markdown
    assert "3DTTN 20 videos c: 1 of 3 runs missing (runs 2)" in markdown
    assert "scipy.stats.ttest_rel" in markdown and "Holm" in markdown
    assert "- 10 videos, 3D: a 0.600, **b 0.800**" in markdown
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
    def record(name: str, run: int, val_acc: float) -> RunRecord:
        return RunRecord(family="3D", train_videos=10, candidate={"name": name}, run=run,
                         best_val_acc=val_acc, best_epoch=1, test_acc=0.5, num_parameters=1)

    # "a" looks better over its own two runs (0.7) but is worse than "b" on the shared run 0.
    records = [record("a", 0, 0.5), record("a", 1, 0.9), record("b", 0, 0.6)]
    selection = select_configurations(records)[("3D", 10)]
    assert (selection.candidate, selection.mean_val_acc) == ("b", 0.6)
    assert select_configurations(records[:2])[("3D", 10)].mean_val_acc == pytest.approx(0.7)


def test_last_weights_are_selected_on_their_own_validation_accuracy() -> None:
    def record(name: str, history: list[float]) -> RunRecord:
        return RunRecord(
            family="3D", train_videos=10, candidate={"name": name}, run=0,
            best_val_acc=max(history), best_epoch=1, test_acc=0.5, num_parameters=1,
            val_acc_history=[[i + 1, v] for i, v in enumerate(history)],
            recipe={"tested_weights": "last"})

    # "a" peaked higher but ended lower: with last-epoch weights tested, "b" is selected.
    selection = select_configurations([record("a", [0.9, 0.5]), record("b", [0.6, 0.7])])
    assert selection[("3D", 10)].candidate == "b"


def test_holm_adjustment() -> None:
    adjusted = holm([0.01, 0.04, math.nan, 0.03])
    assert adjusted[0] == pytest.approx(0.03) and math.isnan(adjusted[2])
    assert adjusted[3] == pytest.approx(0.06) and adjusted[1] == pytest.approx(0.06)


def test_report_shows_the_transform_drift_of_tt_models(tmp_path: Path) -> None:
    drift = TransformDrift("features.0", 2.0, 5.0, 0.1, 0.3, 0.2, 0.5)
    runs = tmp_path / "runs"
    runs.mkdir()
    for run in range(2):
        record = RunRecord(
            run_id=f"3DTTN_n0010_c_r{run:03d}", family="3DTTN", train_videos=10, run=run,
            candidate={"name": "c", "channels": [4, 14], "transform_lr_scale": 10},
            best_val_acc=0.5, best_epoch=1, test_acc=0.5, num_parameters=1, transforms=[drift])
        (runs / f"{record.run_id}.json").write_text(record.to_json())
    markdown = write_report(tmp_path)
    assert "| 10 | 3DTTN | 2.00 | 5.00 | 0.100 | 0.300 | 0.200 | 0.500 |" in markdown
    assert "c: (4, 14), transform_lr_scale 10" in markdown


def test_records_round_trip_and_reject_unknown_fields() -> None:
    record = RunRecord(best_epoch=2, best_val_acc=0.5, test_acc=0.4, num_parameters=3,
                       transforms=[TransformDrift("features.0", 1, 2, 3, 4, 5, 6)])
    assert RunRecord.from_dict(json.loads(record.to_json())) == record
    with pytest.raises(ValueError, match=r"unknown run record field\(s\) \['acc'\]"):
        RunRecord.from_dict({**record.to_dict(), "acc": 1})
    with pytest.raises(ValueError, match="incomplete run record"):
        RunRecord.from_dict({"test_acc": 0.4})


def test_figure_ticks_at_the_sizes_and_says_error_bars_are_standard_errors(tmp_path: Path) -> None:
    write_results(tmp_path)
    rows = table_rows(select_configurations(load_records(tmp_path)), [10, 20])
    fig = figure(rows, "t")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20"]
    assert list(ax.get_xticks()) == [10, 20]
    assert "standard error" in ax.get_legend().get_title().get_text()


def test_figure_gives_every_row_label_its_own_colour(tmp_path: Path) -> None:
    write_results(tmp_path)
    rows = table_rows(select_configurations(load_records(tmp_path)), [10, 20])
    labels = ["3D", "3DTTN", "3DTTN-fixed", "2+1D", "3DTTN (Θ bounded)", "3DTTN-fixed (TTN widths)"]
    rows = [dict(row, family=label) for row in rows[:1] for label in labels]
    ax = figure(rows, "t").axes[0]
    ours = {c.get_label(): to_hex(c.lines[0].get_color()) for c in ax.containers}
    assert len(ours) == len(labels) and len(set(ours.values())) == len(labels)


def test_report_statistics_and_select_import_no_lightning() -> None:
    """They read saved files only: importing them must not pull in Lightning (seconds)."""
    import subprocess
    import sys

    code = ("import sys, lightning_ttn.protocol.report, lightning_ttn.protocol.select, "
            "lightning_ttn.protocol.statistics; "
            "print(sorted(m for m in sys.modules if 'lightning' in m and 'ttn' not in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
