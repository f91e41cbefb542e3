"""Tests of ``python -m lightning_ttn.protocol.select``: the final sweep file, and superseding the
final runs of candidates a grown grid no longer selects."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ttn.protocol.schema import load_config, parse_config, plan_runs
from lightning_ttn.protocol.select import main
from lightning_ttn.protocol.store import dump_config, load_saved_config
from lightning_ttn.training.record import RunRecord

GRID = {
    "source": "embedded",
    "sizes": [10, 20],
    "runs": 2,
    "first_run": 100,
    "epochs": 3,
    "families": {
        "3D": [{"name": "lr0.01", "channels": [4, 14], "lr": 0.01},
               {"name": "lr0.1", "channels": [4, 14], "lr": 0.1}],
        "3DTTN": [{"name": "t1", "channels": [4, 14], "transform_lr_scale": 1}],
    },
}


def write_grid(directory: Path, val_acc: dict[tuple[str, int, str], float],
               grid: dict = GRID) -> None:
    """A grid results directory: its sweep.json and one record per planned run."""
    config = parse_config({**grid, "output_dir": str(directory)})
    (directory / "runs").mkdir(parents=True, exist_ok=True)
    (directory / "sweep.json").write_text(dump_config(config)[1])
    for spec in plan_runs(config):
        fields = {"name": spec.candidate.name, "channels": list(spec.candidate.channels),
                  "conv": spec.candidate.conv, **dict(spec.candidate.recipe)}
        key = (spec.family, spec.train_videos, spec.candidate.name)
        record = RunRecord(
            run_id=spec.run_id, family=spec.family, train_videos=spec.train_videos,
            run=spec.run, candidate=fields, best_val_acc=val_acc[key], best_epoch=3,
            test_acc=0.5, num_parameters=1)
        (directory / "runs" / f"{spec.run_id}.json").write_text(record.to_json())


def start_final(final_file: Path) -> Path:
    """Saves the final sweep's config and writes records of all its runs, as a sweep would."""
    config = load_config(final_file)
    output = Path(config.output_dir)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    (output / "sweep.json").write_text(dump_config(config)[1])
    (output / "sweep.yaml").write_text(dump_config(config)[0])
    for spec in plan_runs(config):
        for suffix in (".json", ".yaml", ".lock"):
            (output / "runs" / f"{spec.run_id}{suffix}").write_text("{}")
    return output


VAL = {("3D", 10, "lr0.01"): 0.6, ("3D", 10, "lr0.1"): 0.7, ("3D", 20, "lr0.01"): 0.8,
       ("3D", 20, "lr0.1"): 0.7, ("3DTTN", 10, "t1"): 0.6, ("3DTTN", 20, "t1"): 0.8}


def test_final_sweep_trains_the_selected_candidates_on_fresh_runs(tmp_path: Path) -> None:
    write_grid(tmp_path / "grid", VAL)
    final_file = tmp_path / "final.yaml"
    main([str(tmp_path / "grid"), "--out", str(final_file),
          "--output-dir", str(tmp_path / "final"), "--runs", "3"])

    final = load_config(final_file)
    assert (final.first_run, final.runs, final.sizes, final.recipe.epochs) == (0, 3, (10, 20), 3)
    chosen = {family: {c.name: (c.sizes, dict(c.recipe)) for c in candidates}
              for family, candidates in final.families.items()}
    assert chosen == {"3D": {"lr0.1": ((10,), {"lr": 0.1}), "lr0.01": ((20,), {"lr": 0.01})},
                      "3DTTN": {"t1": ((10, 20), {"transform_lr_scale": 1})}}


def test_a_changed_selection_is_refused_then_superseded(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid, output = tmp_path / "grid", tmp_path / "final"
    final_file = tmp_path / "final.yaml"
    args = [str(grid), "--out", str(final_file), "--output-dir", str(output), "--runs", "2"]
    write_grid(grid, VAL)
    main(args)
    start_final(final_file)
    main(args)  # the same selection again: nothing to supersede, the sweep resumes
    assert (output / "sweep.json").exists()

    # The grid grows: a new 3D candidate wins at 10 videos and drops "lr0.1".
    grown = {**GRID, "families": {
        **GRID["families"],
        "3D": [*GRID["families"]["3D"], {"name": "lr0.2", "channels": [4, 14], "lr": 0.2}]}}
    write_grid(grid, {**VAL, ("3D", 10, "lr0.2"): 0.9, ("3D", 20, "lr0.2"): 0.1}, grown)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "2 of its planned runs" in err and "--supersede" in err
    assert (output / "runs" / "3D_n0010_lr0.1_r000.json").exists()

    main(args + ["--supersede"])
    assert "moved 2 finished runs" in capsys.readouterr().out
    moved = sorted(p.name for p in (output / "superseded" / "runs").iterdir())
    assert moved == [f"3D_n0010_lr0.1_r00{r}{s}" for r in (0, 1) for s in (".json", ".lock",
                                                                          ".yaml")]
    kept = sorted(p.name for p in (output / "runs").glob("*.json"))
    assert kept == [f"{run_id}_r00{r}.json" for run_id in
                    ("3DTTN_n0010_t1", "3DTTN_n0020_t1", "3D_n0020_lr0.01") for r in (0, 1)]
    # The stale config is gone, so the sweep starts from the new file and trains lr0.2's runs.
    assert load_saved_config(output) is None
    assert [c.name for c in load_config(final_file).families["3D"]] == ["lr0.2", "lr0.01"]


def test_a_final_directory_with_other_settings_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_grid(tmp_path / "grid", VAL)
    final_file, output = tmp_path / "final.yaml", tmp_path / "final"
    args = [str(tmp_path / "grid"), "--out", str(final_file), "--output-dir", str(output)]
    main(args + ["--runs", "2"])
    start_final(final_file)
    config = load_config(final_file)
    (output / "sweep.json").write_text(dump_config(
        parse_config({**config.to_dict(), "epochs": 7}))[1])
    with pytest.raises(SystemExit):
        main(args + ["--runs", "2", "--supersede"])
    assert "different epochs" in capsys.readouterr().err
    assert not (output / "superseded").exists()


def test_a_partial_grid_is_refused_unless_allowed(tmp_path: Path, capsys) -> None:
    write_grid(tmp_path / "grid", VAL)
    next((tmp_path / "grid" / "runs").glob("3D_n0010_lr0.1_*.json")).unlink()
    args = [str(tmp_path / "grid"), "--out", str(tmp_path / "final.yaml"),
            "--output-dir", str(tmp_path / "final")]
    with pytest.raises(SystemExit):
        main(args)
    assert "misses 1 of its planned runs" in capsys.readouterr().err
    main([*args, "--allow-partial"])
    assert (tmp_path / "final.yaml").exists()


def test_the_bounded_selection_skips_large_multipliers(tmp_path: Path) -> None:
    grid = {**GRID, "families": {"3DTTN": [
        {"name": "t1", "channels": [4, 14], "transform_lr_scale": 1},
        {"name": "t1000", "channels": [4, 14], "transform_lr_scale": 1000}]}}
    val = {("3DTTN", size, name): acc for size in (10, 20)
           for name, acc in (("t1", 0.6), ("t1000", 0.7))}
    write_grid(tmp_path / "grid", val, grid)
    out = tmp_path / "final.yaml"
    main([str(tmp_path / "grid"), "--out", str(out), "--output-dir", str(tmp_path / "f")])
    assert [c.name for c in load_config(out).families["3DTTN"]] == ["t1000"]
    main([str(tmp_path / "grid"), "--out", str(out), "--output-dir", str(tmp_path / "b"),
          "--families", "3DTTN", "--max-transform-lr-scale", "10"])
    final = load_config(out)
    assert [c.name for c in final.families["3DTTN"]] == ["t1"]
    assert "--max-transform-lr-scale 10" in out.read_text().splitlines()[0]


def test_selections_on_the_rate_edge_are_named_and_can_stop_the_final(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # 3D at 10 videos selects lr 0.1 (the largest), at 20 lr 0.01 (the smallest); the 3DTTN has
    # one rate only, which is no edge.
    write_grid(tmp_path / "grid", VAL)
    final_file = tmp_path / "final.yaml"
    args = [str(tmp_path / "grid"), "--out", str(final_file), "--output-dir", str(tmp_path / "f")]
    main(args)
    err = capsys.readouterr().err
    assert "3D at 10 videos: lr 0.1 is the largest of 0.01, 0.1" in err
    assert "3D at 20 videos: lr 0.01 is the smallest of 0.01, 0.1" in err
    assert "3DTTN" not in err
    final_file.unlink()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--require-interior-lr"])
    assert exit_info.value.code == 2
    assert "2 selected learning rates are on the grid's edge" in capsys.readouterr().err
    assert not final_file.exists()


def test_an_interior_rate_is_no_edge_and_other_fields_make_other_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # lr 0.1 sits between 0.01 and 1 at widths (4, 14); the (6, 16) candidate is another line.
    grid = {**GRID, "sizes": [10], "families": {"3D": [
        {"name": f"lr{lr}", "channels": [4, 14], "lr": lr} for lr in (0.01, 0.1, 1.0)] + [
        {"name": "wide", "channels": [6, 16], "lr": 5.0}]}}
    val = {("3D", 10, "lr0.01"): 0.6, ("3D", 10, "lr0.1"): 0.8, ("3D", 10, "lr1.0"): 0.7,
           ("3D", 10, "wide"): 0.5}
    write_grid(tmp_path / "grid", val, grid)
    main([str(tmp_path / "grid"), "--out", str(tmp_path / "final.yaml"),
          "--output-dir", str(tmp_path / "f"), "--require-interior-lr"])
    assert "warning" not in capsys.readouterr().err
    assert (tmp_path / "final.yaml").exists()
