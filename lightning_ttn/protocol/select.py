"""Hyperparameter selection on separate runs: from a grid sweep's records to a final sweep file.

``python -m lightning_ttn.protocol.select <grid results dir> --out <final sweep.yaml>
--output-dir DIR [--runs 8] [--first-run 0] [--families F ...] [--max-transform-lr-scale X]
[--require-interior-lr]`` selects, per family and training-set size, the
candidate with the highest mean validation accuracy of its tested weights (the report's rule,
:func:`lightning_ttn.protocol.statistics.select_configurations`) and writes a sweep file that
trains only the selected candidates, on fresh run indices, with the grid sweep's other settings.
Reporting the final sweep then gives test accuracies untouched by the selection. Lightning-free.

A selected learning rate that is the smallest or the largest the grid tried (with every other
field of the candidate equal) is on the grid's edge: the optimum may lie beyond it. Such
selections are printed as warnings; ``--require-interior-lr`` refuses to write the final sweep
then, so an unattended script stops where the grid needs another rate.

When the grid grows after the final sweep has started and the selection changes, the final
sweep's output directory no longer matches the new file (a sweep refuses to resume into it).
``--supersede`` then moves the final runs of every dropped candidate to
``<output_dir>/superseded/runs/`` (kept, never reported) and removes the directory's saved
``sweep.json``/``sweep.yaml``, which the next sweep invocation writes from the new file; runs of
candidates still selected stay where they are. Stop the final sweep's workers first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from lightning_ttn.fileio import write_text_atomic
from lightning_ttn.protocol.schema import candidate_dict, parse_config, plan_runs
from lightning_ttn.protocol.statistics import recipe_value, select_configurations
from lightning_ttn.protocol.store import (
    config_differences,
    load_records,
    load_saved_config,
    runs_dir,
)


def final_sweep(results_dir: str | Path, runs: int, first_run: int, output_dir: str,
                families: list[str] | None = None,
                max_transform_lr_scale: float | None = None, allow_partial: bool = False
                ) -> dict[str, Any]:
    """The final sweep mapping: the grid's settings, the selected candidates only.

    Args:
        results_dir: The grid sweep's output directory.
        runs: Runs per selected candidate.
        first_run: First run index of the final runs.
        output_dir: The final sweep's output directory.
        families: Select for these families only (default: all of the grid's).
        max_transform_lr_scale: Select only among candidates whose transform multiplier is at
            most this (e.g. 10: Θ keeps its geometric meaning; the "Θ bounded" row).
        allow_partial: Select on a grid that misses some of its planned runs.

    Raises:
        ValueError: the directory has no sweep.json or no finished runs (after the filters),
            or the grid is incomplete and ``allow_partial`` is false.
    """
    config = load_saved_config(results_dir)
    records = [
        r for r in load_records(results_dir)
        if (families is None or r.family in families)
        and (max_transform_lr_scale is None
             or recipe_value(r, "transform_lr_scale", 1.0) <= max_transform_lr_scale)
    ]
    if config is None or not records:
        raise ValueError(f"{results_dir} holds no sweep.json or no finished runs"
                         + (" of the selected families and multipliers" if records == [] and
                            (families or max_transform_lr_scale) else ""))
    finished = {r.run_id for r in load_records(results_dir)}
    missing = [s.run_id for s in plan_runs(config) if s.run_id not in finished]
    if missing and not allow_partial:
        raise ValueError(f"{results_dir} misses {len(missing)} of its planned runs (e.g. "
                         f"{missing[0]}): finish the grid first, or pass --allow-partial")
    selections = select_configurations(records)
    chosen: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (family, size), selection in sorted(selections.items(), key=lambda kv: kv[0][1]):
        fields = dict(selection.candidate_fields)
        entry = chosen[family].setdefault(fields["name"], {**fields, "sizes": []})
        entry["sizes"].append(size)
    raw = config.to_dict()
    raw.update(output_dir=output_dir, runs=runs, first_run=first_run)
    raw["sizes"] = sorted({size for _, size in selections})
    raw["families"] = {family: list(by_name.values()) for family, by_name in chosen.items()}
    return raw


def rate_edges(results_dir: str | Path, raw_final: dict[str, Any]) -> list[str]:
    """The selections of a final sweep mapping whose learning rate is on the grid's edge.

    Args:
        results_dir: The grid sweep's output directory.
        raw_final: :func:`final_sweep`'s mapping.

    Returns:
        One line per edge selection, e.g. ``"3D at 500 videos: lr 0.4 is the largest of 0.1,
        0.2, 0.4"``; empty if every selected rate has a smaller and a larger one beside it.
    """
    grid = load_saved_config(results_dir)
    default_lr = grid.recipe.lr

    def rate(fields: dict[str, Any]) -> float:
        return fields.get("lr", default_lr)

    def other_fields(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if k not in ("name", "lr", "sizes")}

    edges = []
    for family, selected in raw_final["families"].items():
        for chosen in selected:
            for size in chosen["sizes"]:
                line = sorted({rate(fields) for fields in map(candidate_dict, grid.families[family])
                               if other_fields(fields) == other_fields(chosen)
                               and (fields["sizes"] is None or size in fields["sizes"])})
                if len(line) > 1 and rate(chosen) in (line[0], line[-1]):
                    side = "smallest" if rate(chosen) == line[0] else "largest"
                    edges.append(f"{family} at {size} videos: lr {rate(chosen):g} is the {side} "
                                 f"of {', '.join(f'{lr:g}' for lr in line)}")
    return edges


def dropped_run_ids(raw_final: dict[str, Any]) -> list[str] | None:
    """Runs of the final sweep's output directory that the new final sweep no longer plans.

    Returns:
        None if the directory holds no sweep or one the new file resumes (same settings,
        candidates only added); else the run ids of the saved sweep that the new one drops.

    Raises:
        ValueError: the saved sweep differs in more than its candidates.
    """
    saved = load_saved_config(raw_final["output_dir"])
    if saved is None:
        return None
    final = parse_config(raw_final)
    differences = config_differences(saved, final)
    if not differences:
        return None
    if differences != ["families"]:
        raise ValueError(
            f"{raw_final['output_dir']} holds a sweep with different {', '.join(differences)} "
            "(only the selected candidates may change); use another --output-dir")
    planned = {spec.run_id for spec in plan_runs(final)}
    return [spec.run_id for spec in plan_runs(saved) if spec.run_id not in planned]


def superseded_dir(output_dir: str | Path) -> Path:
    """Where :func:`supersede` keeps the runs of dropped candidates (never reported)."""
    return Path(output_dir, "superseded", "runs")


def supersede(output_dir: str | Path, run_ids: list[str]) -> int:
    """Moves the files of ``run_ids`` to :func:`superseded_dir` and removes the saved sweep
    config; returns the number of finished runs moved."""
    source, target = runs_dir(output_dir), superseded_dir(output_dir)
    moved = 0
    for run_id in run_ids:
        # "<run_id>." so that run 100 ("..._r100") does not take the files of run 1000.
        for path in sorted(source.glob(f"{run_id}.*")):
            target.mkdir(parents=True, exist_ok=True)
            moved += path.suffix == ".json"
            shutil.move(path, target / path.name)
    for name in ("sweep.json", "sweep.yaml"):
        Path(output_dir, name).unlink(missing_ok=True)
    return moved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lightning_ttn.protocol.select",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", help="the grid sweep's output_dir")
    parser.add_argument("--out", required=True, help="final sweep file to write")
    parser.add_argument("--output-dir", required=True, help="output_dir of the final sweep")
    parser.add_argument("--runs", type=int, default=8, help="runs per selected candidate")
    parser.add_argument("--first-run", type=int, default=0, help="first run index")
    parser.add_argument("--families", nargs="+", help="select for these families only")
    parser.add_argument("--max-transform-lr-scale", type=float,
                        help="select only among candidates whose transform_lr_scale is at most "
                             "this (e.g. 10 for the 'Θ bounded' row)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="select although the grid misses some of its planned runs")
    parser.add_argument("--require-interior-lr", action="store_true",
                        help="write nothing if a selected learning rate is the smallest or the "
                             "largest its grid tried (add a rate beyond it and rerun the grid)")
    parser.add_argument("--supersede", action="store_true",
                        help="if the selection changed, move the output dir's runs of dropped "
                             "candidates to <output-dir>/superseded/runs/")
    args = parser.parse_args(argv)
    try:
        raw = final_sweep(args.results_dir, args.runs, args.first_run, args.output_dir,
                          args.families, args.max_transform_lr_scale, args.allow_partial)
        dropped = dropped_run_ids(raw)
        edges = rate_edges(args.results_dir, raw)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    for edge in edges:
        print(f"warning: selected at the grid's edge: {edge}", file=sys.stderr)
    if edges and args.require_interior_lr:
        parser.exit(2, f"error: {len(edges)} selected learning rates are on the grid's edge "
                       "(above); add the next rate beyond each to the grid, train it and select "
                       "again\n")
    if dropped is not None and not args.supersede:
        parser.exit(2, f"error: the selection changed since {args.output_dir} was started: "
                       f"{len(dropped)} of its planned runs belong to candidates no longer "
                       "selected; rerun with --supersede to move them aside, or use another "
                       "--output-dir\n")
    if dropped is not None:
        moved = supersede(args.output_dir, dropped)
        print(f"moved {moved} finished runs of dropped candidates to "
              f"{superseded_dir(args.output_dir)}")
    command = " ".join(["python -m lightning_ttn.protocol.select", *(argv or sys.argv[1:])])
    header = (f"# Generated by `{command}`:\n# the candidates selected on the grid's runs, "
              "trained on fresh run indices.\n")
    write_text_atomic(args.out, header + yaml.safe_dump(raw, sort_keys=False))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
