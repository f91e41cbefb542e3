"""Table 2 and Figure 3 of the paper from a sweep's result files.

``python -m lightning_ttn.report <results dir> [--out DIR]`` reads ``<results dir>/runs/*.json``
(written by ``lightning_ttn.sweep``; temporary and lock files are ignored) and writes
``table.md``, ``table.csv`` and ``figure.png``. Model selection follows the paper (Section
3.4): for each family and training-set size, the configuration with the highest mean
best-validation accuracy over its runs is selected, and the test accuracies of its runs give
the mean and the standard error. Works on a partial sweep: it reports what is finished and
lists what is missing relative to the ``sweep.json`` the sweep saved in the directory.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from scipy import stats

from lightning_ttn.fileio import atomic_path, write_text_atomic
from lightning_ttn.sweep_config import FAMILY_CONVS, SweepConfig, parse_config, plan_runs

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)

FAMILIES = tuple(FAMILY_CONVS)
SIGNIFICANCE_LEVEL = 0.05
SIGNIFICANCE_NOTE = (
    "p: paired two-sided t-test (scipy.stats.ttest_rel) of the test accuracies of the two "
    "selected configurations over the runs both finished (run r of both models is trained on "
    f"the same videos); significant (*) if p < {SIGNIFICANCE_LEVEL}; n/a with fewer than 2 "
    "paired runs."
)
SELECTION_NOTE = (
    "Model selection (paper Section 3.4): per family and size, the configuration with the "
    "highest mean best-validation accuracy over its runs; mean and standard error (std with "
    "ddof=1 / sqrt(n)) of the test accuracy of its runs' best-validation weights."
)
_COLORS = {"3D": "tab:blue", "3DTTN": "tab:orange"}


@dataclass(frozen=True)
class Selection:
    """The selected configuration of one family at one training-set size.

    Attributes:
        candidate: Name of the selected configuration.
        mean_val_acc: Mean best-validation accuracy of its runs (the selection criterion).
        test_accs: Test accuracy of each of its runs, by run index.
        num_parameters: Trainable parameters of the model.
    """

    candidate: str
    mean_val_acc: float
    test_accs: dict[int, float]
    num_parameters: int

    @property
    def mean(self) -> float:
        """Mean test accuracy over the runs."""
        return float(np.mean(list(self.test_accs.values())))

    @property
    def stderr(self) -> float:
        """Standard error of the mean test accuracy (NaN with one run)."""
        values = list(self.test_accs.values())
        if len(values) < 2:
            return math.nan
        return float(np.std(values, ddof=1) / math.sqrt(len(values)))


# ----------------------------------------------------------------------------- reading
def load_results(results_dir: str | Path) -> list[dict[str, Any]]:
    """The finished runs' records in ``<results_dir>/runs/*.json``.

    Hidden files (the sweep's ``.<name>.*.tmp`` temporary files) and ``*.lock`` files are
    ignored; an unreadable JSON file is skipped with a warning.
    """
    records = []
    for path in sorted(Path(results_dir, "runs").glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            warnings.warn(f"skipping unreadable result {path}: {e}", stacklevel=2)
    return records


def load_sweep_config(results_dir: str | Path) -> SweepConfig | None:
    """The sweep config saved in the results directory, or None if there is none."""
    path = Path(results_dir, "sweep.json")
    return parse_config(json.loads(path.read_text())) if path.exists() else None


def paper_table() -> dict[int, dict[str, float]]:
    """The paper's Table 2, by training-set size (columns as in ``paper_table2.csv``)."""
    text = resources.files("lightning_ttn").joinpath("paper_table2.csv").read_text()
    rows = csv.DictReader(io.StringIO(text))
    return {int(row.pop("train_videos")): {k: float(v) for k, v in row.items()} for row in rows}


# ----------------------------------------------------------------------------- statistics
def select_configurations(records: list[dict[str, Any]]) -> dict[tuple[str, int], Selection]:
    """The paper's model selection for every ``(family, train_videos)`` with results.

    Candidates are compared on the runs they all finished, i.e. on the same training videos (on
    a partial sweep one candidate may have more runs than another); if they share no run, each
    on its own runs. Ties in mean validation accuracy go to the first candidate name in sorted
    order. The selected candidate's statistics use all its runs.
    """
    groups: dict[tuple[str, int], dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        key = (record["family"], record["train_videos"])
        groups[key][record["candidate"]["name"]].append(record)
    selections = {}
    for key, by_candidate in groups.items():
        shared = set.intersection(*({r["run"] for r in runs} for runs in by_candidate.values()))
        mean_val = {
            name: float(np.mean([r["best_val_acc"] for r in runs if r["run"] in shared]
                                or [r["best_val_acc"] for r in runs]))
            for name, runs in by_candidate.items()
        }
        best = max(sorted(mean_val), key=mean_val.__getitem__)
        runs = by_candidate[best]
        selections[key] = Selection(
            candidate=best,
            mean_val_acc=mean_val[best],
            test_accs={r["run"]: float(r["test_acc"]) for r in runs},
            num_parameters=runs[0]["num_parameters"],
        )
    return selections


def paired_p_value(first: Selection, second: Selection) -> tuple[float, int]:
    """Paired two-sided t-test over the runs both selections have.

    Returns:
        ``(p, n)``: the p-value (NaN with fewer than 2 paired runs or identical differences)
        and the number of paired runs.
    """
    shared = sorted(first.test_accs.keys() & second.test_accs.keys())
    if len(shared) < 2:
        return math.nan, len(shared)
    a = [first.test_accs[r] for r in shared]
    b = [second.test_accs[r] for r in shared]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # zero variance of the differences
        return float(stats.ttest_rel(a, b).pvalue), len(shared)


def table_rows(
    selections: dict[tuple[str, int], Selection], sizes: list[int]
) -> list[dict[str, Any]]:
    """One Table 2 row per size: both families' statistics, the test and the paper's numbers."""
    paper = paper_table()
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"train_videos": size}
        for family in FAMILIES:
            selection = selections.get((family, size))
            row[f"{family}_config"] = selection.candidate if selection else None
            row[f"{family}_mean_acc"] = selection.mean if selection else None
            row[f"{family}_stderr"] = selection.stderr if selection else None
            row[f"{family}_params"] = selection.num_parameters if selection else None
            row[f"{family}_runs"] = len(selection.test_accs) if selection else 0
        p_value, paired = math.nan, 0
        if all((f, size) in selections for f in FAMILIES):
            p_value, paired = paired_p_value(*(selections[(f, size)] for f in FAMILIES))
        row["paired_runs"] = paired
        row["p_value"] = p_value
        row["significant"] = bool(p_value < SIGNIFICANCE_LEVEL)
        for key, value in paper.get(size, {}).items():
            row[f"paper_{key}"] = value
        rows.append(row)
    return rows


def missing_runs(config: SweepConfig, records: list[dict[str, Any]]) -> list[str]:
    """Per family, size and configuration of the sweep, the run indices not finished yet."""
    finished = {record["run_id"] for record in records}
    missing: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    planned: dict[tuple[str, int, str], int] = defaultdict(int)
    for spec in plan_runs(config):
        key = (spec.family, spec.train_videos, spec.candidate.name)
        planned[key] += 1
        if spec.run_id not in finished:
            missing[key].append(spec.run)
    return [
        f"{family} {size} videos {name}: {len(runs)} of {planned[(family, size, name)]} runs "
        f"missing (runs {', '.join(map(str, runs))})"
        for (family, size, name), runs in sorted(
            missing.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
        )
    ]


# ----------------------------------------------------------------------------- writing
def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _family_cells(row: dict[str, Any], family: str, other: str) -> list[str]:
    mean = _fmt(row[f"{family}_mean_acc"], 3)
    if row[f"{other}_mean_acc"] is not None and row[f"{family}_mean_acc"] is not None:
        if row[f"{family}_mean_acc"] > row[f"{other}_mean_acc"]:
            mean = f"**{mean}**"
    params = row[f"{family}_params"]
    return [mean, _fmt(row[f"{family}_stderr"], 4), "n/a" if params is None else f"{params:,}",
            str(row[f"{family}_runs"])]


def _paper_cell(row: dict[str, Any], family: str) -> str:
    if f"paper_{family}_mean_acc" not in row:
        return ""
    return (f"{row[f'paper_{family}_mean_acc']:.3f} ± {row[f'paper_{family}_stderr']:.4f} "
            f"({int(row[f'paper_{family}_params']):,})")


def markdown_table(rows: list[dict[str, Any]], missing: list[str]) -> str:
    """Table 2 in Markdown, the paper's numbers alongside, notes and missing runs."""
    lines = [
        "| train videos | 3D mean acc | std err | params | runs | 3DTTN mean acc | std err "
        "| params | runs | p | significant | paper 3D | paper 3DTTN |",
        "|" + "---:|" * 13,
    ]
    for row in rows:
        cells = [str(row["train_videos"]), *_family_cells(row, "3D", "3DTTN"),
                 *_family_cells(row, "3DTTN", "3D"), _fmt(row["p_value"], 4),
                 "*" if row["significant"] else "", _paper_cell(row, "3D"),
                 _paper_cell(row, "3DTTN")]
        lines.append("| " + " | ".join(cells) + " |")
    selected = [
        f"{row['train_videos']}: "
        + ", ".join(f"{family} {row[f'{family}_config'] or 'n/a'}" for family in FAMILIES)
        for row in rows
    ]
    lines += ["", SELECTION_NOTE, "", SIGNIFICANCE_NOTE, "",
              "Paper columns: Ras et al. (2019), Table 2: mean ± standard error (parameters).",
              "", "Selected configurations: " + "; ".join(selected) + "."]
    if missing:
        lines += ["", "Missing runs (relative to sweep.json):", ""]
        lines += [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes the rows, one column per key (empty cell for a missing value)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def plot_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Figure 3: mean test accuracy (± standard error) against training videos, log x axis,
    the paper's curves dashed, ``*`` above the sizes with a significant difference."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family in FAMILIES:
        ours = [r for r in rows if r[f"{family}_mean_acc"] is not None]
        ax.errorbar(
            [r["train_videos"] for r in ours],
            [r[f"{family}_mean_acc"] for r in ours],
            yerr=[np.nan_to_num(r[f"{family}_stderr"]) for r in ours],
            marker="o", capsize=3, color=_COLORS[family], label=f"LeNet-5-{family} (ours)",
        )
        paper = sorted(paper_table().items())
        ax.plot([s for s, _ in paper], [p[f"{family}_mean_acc"] for _, p in paper],
                linestyle="--", color=_COLORS[family], alpha=0.6,
                label=f"LeNet-5-{family} (paper)")
    for row in rows:
        if row["significant"]:
            top = max(row[f"{f}_mean_acc"] + np.nan_to_num(row[f"{f}_stderr"]) for f in FAMILIES)
            ax.annotate("*", (row["train_videos"], top), ha="center", va="bottom", fontsize=14)
    ax.set_xscale("log")
    ax.set_xlabel("training videos")
    ax.set_ylabel("mean test accuracy")
    ax.set_title(f"Video-MNIST; * paired t-test p < {SIGNIFICANCE_LEVEL}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def write_report(results_dir: str | Path, out_dir: str | Path | None = None) -> str:
    """Writes ``table.md``, ``table.csv`` and ``figure.png`` and returns the Markdown table.

    Args:
        results_dir: A sweep's output directory.
        out_dir: Where to write; default ``results_dir``.
    """
    out = Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_results(results_dir)
    config = load_sweep_config(results_dir)
    sizes = {r["train_videos"] for r in records} | set(config.sizes if config else ())
    rows = table_rows(select_configurations(records), sorted(sizes))
    missing = missing_runs(config, records) if config else []
    markdown = markdown_table(rows, missing)
    write_text_atomic(out / "table.md", markdown)
    write_csv(rows, out / "table.csv")
    plot_figure(rows, out / "figure.png")
    return markdown


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ttn.report",
        description="Table 2 and Figure 3 from a sweep's result files.",
    )
    parser.add_argument("results_dir", help="the sweep's output_dir")
    parser.add_argument("--out", help="output directory (default: results_dir)")
    args = parser.parse_args(argv)
    if not Path(args.results_dir, "runs").is_dir():
        parser.exit(2, f"error: {args.results_dir} has no runs/ directory of sweep results\n")
    print(write_report(args.results_dir, args.out), end="")
    print(f"wrote table.md, table.csv and figure.png into {args.out or args.results_dir}")


if __name__ == "__main__":
    main()
