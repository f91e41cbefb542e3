"""The study's instruments: kernel health, runs at chance, extra rows in the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lightning_ttn.layers import TTConv3d
from lightning_ttn.models import LeNet5
from lightning_ttn.protocol.report import ExtraRow, main, write_report
from lightning_ttn.protocol.statistics import HealthSummary, at_chance, health_summary
from lightning_ttn.training.diagnostics import kernel_health
from lightning_ttn.training.record import KernelHealth, RunRecord, TransformDrift


def naive_health(kernel: torch.Tensor) -> tuple[list[float], float]:
    """Slice norms by loops, float64: the reference for kernel_health."""
    out, _, frames, _, _ = kernel.shape
    ratios = [[kernel[o, :, t].double().norm().item() / kernel[o, :, 0].double().norm().item()
               for t in range(1, frames)] for o in range(out)]
    profile = [sum(r[t] for r in ratios) / out for t in range(frames - 1)]
    collapsed = sum(x < 0.1 for r in ratios for x in r) / (out * (frames - 1))
    return profile, collapsed


def test_kernel_health_matches_a_loop_and_reads_the_identity_as_time_constant() -> None:
    torch.manual_seed(0)
    layer = TTConv3d(2, 6, kernel_size=(4, 5, 5))
    (health,) = kernel_health(torch.nn.Sequential(layer))
    assert health.layer == "0"
    assert health.energy_profile == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert health.collapsed_fraction == 0.0
    with torch.no_grad():  # channels 0-2 shift past the kernel's edge: later slices empty
        layer.translation[:3] = 3.0
        layer.rotation[3:] = 0.3
    (health,) = kernel_health(torch.nn.Sequential(layer))
    profile, collapsed = naive_health(layer.kernel().detach())
    assert health.energy_profile == pytest.approx(profile, rel=1e-9)
    assert health.collapsed_fraction == pytest.approx(collapsed)
    assert collapsed == 0.5


def test_kernel_health_covers_every_tt_layer_and_skips_plain_convs() -> None:
    assert [h.layer for h in kernel_health(LeNet5(channels=(4, 14), conv="ttconv3d"))] == [
        "features.0", "features.3"]
    assert kernel_health(LeNet5(channels=(4, 14), conv="conv3d")) == []


@pytest.mark.parametrize(("profile", "collapsed", "rotation", "words"), [
    ((1.0, 1.0), 0.0, 0.01, "time-constant"),
    ((0.9, 0.7), 0.0, 12.0, "moving: slices keep 70%-90% of K0's energy"),
    ((0.9, 0.6), 0.1, 12.0, "10% of pairs collapsed"),
    ((0.05, 0.0), 0.83, 900.0, "collapsed in time after slice 0: 83% of"),
])
def test_health_is_put_into_words(profile, collapsed, rotation, words) -> None:
    drift = TransformDrift("all", rotation, rotation, 0.001, 0.001, 0.01, 0.01)
    assert words in HealthSummary(profile, collapsed, 1).describe(drift)


def record(run: int, loss: float, val: float, **fields) -> RunRecord:
    return RunRecord(best_val_acc=val, test_acc=val, num_parameters=1, run=run,
                     train_loss_history=[[1, 5.0], [2, loss]], **fields)


def test_runs_at_chance_and_diverged_runs_are_told_apart() -> None:
    assert at_chance(record(0, 2.305, 0.104))
    assert not at_chance(record(0, 2.305, 0.45))  # still learning something
    assert not at_chance(record(0, 0.2, 0.11))
    assert not at_chance(record(0, math.nan, 0.1))  # diverged, counted as such
    assert record(0, math.nan, 0.1).failed and not record(0, 2.3, 0.1).failed
    healthy = record(0, 0.1, 0.9, kernel_health=[KernelHealth("a", [1.0, 0.5], 0.0)])
    broken = record(1, math.inf, 0.9, kernel_health=[KernelHealth("a", [0.0, 0.0], 1.0)])
    assert health_summary([healthy, broken]) == HealthSummary((1.0, 0.5), 0.0, 1)


def test_extra_rows_are_paired_with_the_table(tmp_path: Path, capsys) -> None:
    from test_select import GRID, VAL, write_grid  # tests/ is on sys.path (rootdir-less)
    write_grid(tmp_path / "main", VAL)
    write_grid(tmp_path / "other", VAL)
    rows = ExtraRow.parse(f"3D (other)={tmp_path / 'other'}:3D")
    markdown = write_report(tmp_path / "main", extra=[rows])
    assert "| 10 | 3D (other) |" in markdown and "| 20 | 3D (other) |" in markdown
    assert markdown.endswith(f'Written by `python -m lightning_ttn.report {tmp_path / "main"} '
                             f'--add "3D (other)={tmp_path / "other"}:3D"`.\n')
    assert GRID["sizes"] == [10, 20]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "main"), "--add", "no-colon"])
    assert "--add must be LABEL=DIR:FAMILY" in capsys.readouterr().err
    # Under a family's own label the other sweep's rows are more sizes of that family ...
    larger = {(family, size + 20, name): acc for (family, size, name), acc in VAL.items()}
    write_grid(tmp_path / "larger", larger, {**GRID, "sizes": [30, 40]})
    markdown = write_report(tmp_path / "main", extra=[ExtraRow.parse(
        f"3DTTN={tmp_path / 'larger'}:3DTTN")])
    assert [line.split("|")[1:3] for line in markdown.splitlines() if "| 3DTTN |" in line] == [
        [" 10 ", " 3DTTN "], [" 20 ", " 3DTTN "], [" 30 ", " 3DTTN "], [" 40 ", " 3DTTN "]]
    # ... but never a second candidate at a size the table has: refused, not silently selected.
    with pytest.raises(SystemExit):
        main([str(tmp_path / "main"), "--add", f"3D={tmp_path / 'other'}:3D"])
    assert "already has 3D rows at [10, 20] videos" in capsys.readouterr().err


def test_the_paired_difference_interval_is_scipys() -> None:
    from scipy import stats

    from lightning_ttn.protocol.statistics import Selection, paired_difference_ci

    def selection(accs: dict[int, float]) -> Selection:
        return Selection("c", 0.5, accs, 1, (), {})

    a = selection({0: 0.80, 1: 0.75, 2: 0.90, 3: 0.70, 9: 0.5})
    b = selection({0: 0.78, 1: 0.70, 2: 0.86, 3: 0.71})
    low, high = paired_difference_ci(a, b)
    diffs = [0.02, 0.05, 0.04, -0.01]
    expected = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert (low, high) == pytest.approx((expected.low, expected.high))
    assert all(map(math.isnan, paired_difference_ci(a, selection({0: 0.1}))))


def test_runs_outside_the_plan_are_named_and_left_out(tmp_path: Path) -> None:
    import dataclasses

    from test_select import VAL, write_grid  # tests/ is on sys.path (rootdir-less)

    from lightning_ttn.protocol.store import load_records

    write_grid(tmp_path / "grid", VAL)
    source = next(r for r in load_records(tmp_path / "grid") if r.run_id == "3D_n0010_lr0.1_r100")
    extra = dataclasses.replace(source, run=102, run_id="3D_n0010_lr0.1_r102", best_val_acc=0.99)
    (tmp_path / "grid" / "runs" / "3D_n0010_lr0.1_r102.json").write_text(extra.to_json())
    markdown = write_report(tmp_path / "grid")
    assert "**lr0.1 0.700** (unplanned runs 102)" in markdown  # its 0.99 not in the mean


def test_a_report_of_some_candidates_selects_among_those_only(tmp_path: Path, capsys) -> None:
    from test_select import VAL, write_grid  # tests/ is on sys.path (rootdir-less)

    write_grid(tmp_path / "grid", VAL)
    full = write_report(tmp_path / "grid", tmp_path / "full")
    assert "| 10 | 3D |" in full and "lr0.1: (4, 14), lr 0.1 |" in full  # 0.7 beats 0.6
    part = write_report(tmp_path / "grid", tmp_path / "part", candidates=r"lr0\.01$|^t1$")
    rows = [line for line in part.splitlines() if line.startswith("| 10 |")]
    assert len(rows) == 2 and "lr0.01: (4, 14), lr 0.01 |" in rows[0] and "t1" in rows[1]
    assert "missing" not in part  # the left-out candidates' runs are not "missing"
    assert part.endswith("--candidates 'lr0\\.01$|^t1$'`.\n")
    for pattern, message in (("(", "is not a regular expression"), ("nothing", "no runs in")):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "grid"), "--out", str(tmp_path / "x"), "--candidates", pattern])
        assert message in capsys.readouterr().err


def test_a_sweep_with_no_finished_run_still_reports(tmp_path: Path) -> None:
    (tmp_path / "started" / "runs").mkdir(parents=True)
    markdown = write_report(tmp_path / "started")
    assert markdown.startswith("| train videos | family |")
    assert (tmp_path / "started" / "table.csv").exists()
