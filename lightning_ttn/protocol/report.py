"""Table 2 and Figure 3 from a sweep's run records, for any number of families.

``python -m lightning_ttn.report <results dir> [--out DIR] [--reference 3D]
[--add LABEL=DIR:FAMILY ...] [--candidates REGEX]`` reads
``<results dir>/runs/*.json`` (temporary and lock files are ignored) and writes ``table.md``,
``table.csv`` (one row per size and family) and ``figure.png``. Works on a partial sweep: it
reports what is finished and lists what is missing relative to the saved ``sweep.json``. Reads
saved files only and imports no Lightning.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from lightning_ttn.fileio import atomic_path, write_text_atomic
from lightning_ttn.models import FAMILIES
from lightning_ttn.protocol.paper import paper_table
from lightning_ttn.protocol.schema import SweepConfig, plan_runs
from lightning_ttn.protocol.statistics import (
    CHANCE_LOSS_TOLERANCE,
    CHANCE_VAL_ACC,
    SIGNIFICANCE_LEVEL,
    TIE_RULE,
    Selection,
    health_summary,
    holm,
    paired_difference_ci,
    paired_t_test,
    select_configurations,
)
from lightning_ttn.protocol.store import load_records, load_saved_config
from lightning_ttn.training.recipe import FIELDS as RECIPE_FIELDS
from lightning_ttn.training.record import RunRecord

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the Agg backend)

STATISTICS_NOTE = (
    "Selection: per family and size, the candidate with the highest mean validation accuracy of "
    f"its tested weights over the runs all candidates share; {TIE_RULE}. mean acc: mean test "
    "accuracy of its "
    "runs; std err: std (ddof=1) / sqrt(runs). p: paired two-sided t-test "
    "(scipy.stats.ttest_rel) of the test accuracies against the reference family over the runs "
    "both have (run r of every family is trained on the same videos), with the 95% confidence "
    "interval of the mean paired difference (Student t); p Holm: Holm-adjusted "
    f"over all comparisons of the table; * if p Holm < {SIGNIFICANCE_LEVEL}; n/a with fewer "
    "than 2 paired runs."
)
_COLORS = {"3D": "tab:blue", "3DTTN": "tab:orange", "3DTTN-fixed": "tab:green",
           "2+1D": "tab:purple"}
# Rows added under their own labels (``--add``) take these in order, so no two lines share one.
_EXTRA_COLORS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def _describe(candidate: dict[str, Any]) -> str:
    """A candidate in a few words: widths and recipe overrides."""
    parts = [f"({candidate['channels'][0]}, {candidate['channels'][1]})"
             ] if "channels" in candidate else []
    parts += [f"{k} {candidate[k]}" for k in RECIPE_FIELDS if k in candidate]
    return candidate["name"] + (": " + ", ".join(parts) if parts else "")


def table_rows(
    selections: dict[tuple[str, int], Selection], sizes: list[int], reference: str = "3D"
) -> list[dict[str, Any]]:
    """One row per size and family: the selection, its statistics, the test against the
    reference family and the paper's numbers."""
    paper = paper_table()
    families = [f for f in FAMILIES if any(k[0] == f for k in selections)]
    families += sorted({k[0] for k in selections} - set(families))
    rows = []
    for size in sizes:
        for family in families:
            selection = selections.get((family, size))
            if selection is None:
                continue
            row: dict[str, Any] = {
                "train_videos": size, "family": family, "selected": selection.candidate,
                "configuration": _describe(selection.candidate_fields or
                                           {"name": selection.candidate}),
                "mean_val_acc": selection.mean_val_acc,
                "mean_acc": selection.mean, "stderr": selection.stderr,
                "runs": len(selection.test_accs), "params": selection.num_parameters,
                "diff_vs_reference": math.nan, "diff_ci95_low": math.nan,
                "diff_ci95_high": math.nan, "paired_runs": 0, "p_value": math.nan,
            }
            other = selections.get((reference, size))
            if family != reference and other is not None:
                row["p_value"], row["paired_runs"] = paired_t_test(selection, other)
                shared = selection.test_accs.keys() & other.test_accs.keys()
                if shared:
                    row["diff_vs_reference"] = float(np.mean(
                        [selection.test_accs[r] - other.test_accs[r] for r in shared]))
                    row["diff_ci95_low"], row["diff_ci95_high"] = paired_difference_ci(
                        selection, other)
            summary = selection.candidates.get(selection.candidate)
            row["diverged_runs"] = sum(r.failed for r in selection.records)
            row["runs_at_chance"] = summary.at_chance if summary else 0
            drift = selection.drift()
            health = health_summary(selection.records)
            row["kernel_energy_profile"] = (
                " ".join(f"{e:.3f}" for e in health.energy_profile) if health else "")
            row["kernel_collapsed_fraction"] = health.collapsed_fraction if health else math.nan
            row["kernel_reading"] = health.describe(drift) if health else ""
            for key in ("mean_abs_rotation_deg", "mean_abs_scale_change", "mean_translation_px",
                        "max_abs_rotation_deg", "max_abs_scale_change", "max_translation_px"):
                row[f"theta_{key}"] = getattr(drift, key) if drift else math.nan
            if family in ("3D", "3DTTN") and size in paper:
                row["paper_mean_acc"] = paper[size][f"{family}_mean_acc"]
                row["paper_stderr"] = paper[size][f"{family}_stderr"]
                row["paper_params"] = int(paper[size][f"{family}_params"])
            rows.append(row)
    adjusted = holm([row["p_value"] for row in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["p_holm"] = p
        row["significant"] = bool(p < SIGNIFICANCE_LEVEL)
    return rows


def missing_runs(config: SweepConfig, records: list[RunRecord],
                 candidates: re.Pattern[str] | None = None) -> list[str]:
    """Per family, size and candidate of the sweep (those ``candidates`` matches), the run
    indices not finished yet."""
    finished = {record.run_id for record in records}
    missing: dict[tuple[str, int, str], list[int]] = defaultdict(list)
    planned: dict[tuple[str, int, str], int] = defaultdict(int)
    for spec in plan_runs(config):
        if candidates is not None and not candidates.search(spec.candidate.name):
            continue
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


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def markdown_table(
    rows: list[dict[str, Any]], selections: dict[tuple[str, int], Selection],
    missing: list[str], reference: str, planned: set[tuple[str, int, str, int]] | None = None,
) -> str:
    """The table in Markdown, the paper's numbers alongside, the grid, notes, missing runs.

    ``planned``: the sweep's ``(family, size, candidate, run)``; runs outside it are named as
    unplanned (without it, every run beyond the shared ones is "not compared")."""
    lines = [
        f"| train videos | family | mean acc | std err | runs | params | diff vs {reference} "
        "[95% CI] "
        "| p | p Holm | sig | paper (params) | selected |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|---:|:---:|---:|:---|",
    ]
    for row in rows:
        paper = ""
        if "paper_mean_acc" in row:
            paper = (f"{row['paper_mean_acc']:.3f} ± {row['paper_stderr']:.4f} "
                     f"({row['paper_params']:,})")
        diff = row["diff_vs_reference"]
        interval = ("" if math.isnan(row["diff_ci95_low"]) else
                    f" [{row['diff_ci95_low']:+.3f}, {row['diff_ci95_high']:+.3f}]")
        lines.append("| " + " | ".join([
            str(row["train_videos"]), row["family"], _fmt(row["mean_acc"], 3),
            _fmt(row["stderr"], 4), str(row["runs"]), f"{row['params']:,}",
            "" if math.isnan(diff) else f"{diff:+.3f}{interval}", _fmt(row["p_value"], 4),
            _fmt(row["p_holm"], 4), "*" if row["significant"] else "", paper,
            row["configuration"],
        ]) + " |")
    lines += ["", STATISTICS_NOTE, "",
              "paper: Ras et al. (2019), Table 2: mean ± standard error (parameters)."]
    drift_rows = [r for r in rows if not math.isnan(r["theta_mean_abs_rotation_deg"])]
    if drift_rows:
        lines += ["", "Θ drift of the selected TT models after training (mean over runs, "
                  "layers, channels and transitions; max over all): |rotation| in degrees, "
                  "|scale - 1|, translation length in kernel pixels, per transition.", "",
                  "| train videos | family | mean abs rot | max abs rot | mean abs(scale-1) "
                  "| max abs(scale-1) | mean shift px | max shift px |",
                  "|---:|:---|---:|---:|---:|---:|---:|---:|"]
        for r in drift_rows:
            lines.append("| " + " | ".join([
                str(r["train_videos"]), r["family"],
                _fmt(r["theta_mean_abs_rotation_deg"], 2), _fmt(r["theta_max_abs_rotation_deg"], 2),
                _fmt(r["theta_mean_abs_scale_change"], 3), _fmt(r["theta_max_abs_scale_change"], 3),
                _fmt(r["theta_mean_translation_px"], 3), _fmt(r["theta_max_translation_px"], 3),
            ]) + " |")
    health_rows = [r for r in rows if r["kernel_reading"]]
    if health_rows:
        lines += ["", "Kernel health of the selected TT models after training (runs that did not "
                  "diverge, mean over runs and TT layers): slice energy ||W_t|| / ||W_0|| per "
                  "transition t = 1..T-1 (mean over output channels), the fraction of (channel, "
                  "transition) pairs below 10% of K0's energy, and what the kernel computes.", "",
                  "| train videos | family | energy W_t / W_0 | collapsed | reading |",
                  "|---:|:---|:---|---:|:---|"]
        for r in health_rows:
            lines.append(f"| {r['train_videos']} | {r['family']} | {r['kernel_energy_profile']} "
                         f"| {r['kernel_collapsed_fraction']:.0%} | {r['kernel_reading']} |")
    grids = [(k, s) for k, s in sorted(selections.items(), key=lambda kv: (kv[0][1], kv[0][0]))
             if len(s.alternatives) > 1 or _flags(s, k, s.candidate, planned)]
    if grids:
        lines += ["", "Candidates (mean validation accuracy of the tested weights over the shared "
                  "runs; selected in bold; k/n at chance: runs whose training loss ended within "
                  f"{CHANCE_LOSS_TOLERANCE} of ln 10 with validation accuracy below "
                  f"{CHANCE_VAL_ACC}; diverged: runs whose training loss became NaN or infinite; "
                  "not compared: runs that not every candidate has yet, left out of the "
                  "selection; unplanned: runs outside the sweep's plan, left out of the selection "
                  "and of the planned grid's counts):", ""]
        for (family, size), selection in grids:
            cells = []
            for name, acc in sorted(selection.alternatives.items()):
                cell = f"{name} {acc:.3f}"
                cell = f"**{cell}**" if name == selection.candidate else cell
                flags = _flags(selection, (family, size), name, planned)
                cells.append(cell + (f" ({flags})" if flags else ""))
            lines.append(f"- {size} videos, {family}: " + ", ".join(cells))
    if missing:
        lines += ["", "Missing runs (relative to sweep.json):", ""]
        lines += [f"- {line}" for line in missing]
    return "\n".join(lines) + "\n"


def _flags(selection: Selection, key: tuple[str, int], name: str,
           planned: set[tuple[str, int, str, int]] | None) -> str:
    """A candidate's runs at chance, diverged runs and runs beyond the shared ones, in words
    ('' if none)."""
    summary = selection.candidates.get(name)
    if summary is None:
        return ""
    flags = []
    if summary.at_chance:
        flags.append(f"{summary.at_chance}/{summary.runs} at chance")
    if summary.diverged:
        flags.append(f"{summary.diverged} diverged")
    unplanned = [r for r in summary.extra_runs
                 if planned is not None and (*key, name, r) not in planned]
    pending = [r for r in summary.extra_runs if r not in unplanned]
    if pending:
        flags.append("runs " + ", ".join(map(str, pending)) + " not compared")
    if unplanned:
        flags.append("unplanned runs " + ", ".join(map(str, unplanned)))
    return "; ".join(flags)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes the rows, one column per key (empty cell for a missing value)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def plot_figure(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Writes :func:`figure` as a PNG."""
    fig = figure(rows, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def figure(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    """Figure 3: mean test accuracy ± standard error against training videos (log x, ticks at
    the sizes), the paper's curves dashed, ``*`` where a family differs significantly from the
    reference (Holm)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sizes = sorted({r["train_videos"] for r in rows})
    families = list(dict.fromkeys(r["family"] for r in rows))
    extra_colors = iter(_EXTRA_COLORS * len(families))
    colors = {f: _COLORS.get(f) or next(extra_colors) for f in families}
    paper = sorted((s, p) for s, p in paper_table().items() if s <= max(sizes, default=0))
    for family in families:
        ours = [r for r in rows if r["family"] == family]
        color = colors[family]
        ax.errorbar(
            [r["train_videos"] for r in ours], [r["mean_acc"] for r in ours],
            yerr=[np.nan_to_num(r["stderr"]) for r in ours], marker="o", capsize=3,
            color=color, label=f"{family} (ours)",
        )
        for r in ours:
            if r["significant"]:
                ax.annotate("*", (r["train_videos"], r["mean_acc"] + np.nan_to_num(r["stderr"])),
                            ha="center", va="bottom", fontsize=13, color=color)
        if family in ("3D", "3DTTN") and paper:
            ax.plot([s for s, _ in paper], [p[f"{family}_mean_acc"] for _, p in paper],
                    linestyle="--", color=color, alpha=0.6, label=f"{family} (paper)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training videos")
    ax.set_ylabel("mean test accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, title="error bars: standard error of the mean", title_fontsize=8)
    fig.tight_layout()
    return fig


@dataclass(frozen=True)
class ExtraRow:
    """Another final sweep's runs of one family, reported under their own label.

    For a row selected by another rule or grid (e.g. ``3DTTN (Θ bounded)``) and tested on the
    same run indices, so that it pairs with the table's families run by run. With the label of
    one of the table's families it adds that family's rows at other sizes (e.g. Table 2's
    500-video rows beside the low-data ones); a label may not get two rows at one size.

    Attributes:
        label: The row's family label in the table.
        results_dir: That sweep's output directory.
        family: The family whose runs it reports.
    """

    label: str
    results_dir: str
    family: str

    @classmethod
    def parse(cls, text: str) -> ExtraRow:
        """Parses ``LABEL=DIR:FAMILY``.

        Raises:
            ValueError: not of that form, or DIR has no runs/ directory.
        """
        label, _, rest = text.partition("=")
        directory, _, family = rest.rpartition(":")
        if not (label and directory and family):
            raise ValueError(f"--add must be LABEL=DIR:FAMILY, got {text!r}")
        if not Path(directory, "runs").is_dir():
            raise ValueError(f"--add {text!r}: {directory} has no runs/ directory")
        return cls(label, directory, family)

    def records(self) -> list[RunRecord]:
        """The family's records, relabeled."""
        return [dataclasses.replace(r, family=self.label)
                for r in load_records(self.results_dir) if r.family == self.family]


def report_command(results_dir: str | Path, out_dir: str | Path | None, reference: str,
                   extra: list[ExtraRow] | tuple[ExtraRow, ...],
                   candidates: str | None = None) -> str:
    """The command line that writes this report (into its table.md, so that every table says
    how to regenerate it)."""
    parts = ["python -m lightning_ttn.report", str(results_dir)]
    if out_dir is not None and Path(out_dir) != Path(results_dir):
        parts += ["--out", str(out_dir)]
    if reference != "3D":
        parts += ["--reference", reference]
    parts += [f'--add "{row.label}={row.results_dir}:{row.family}"' for row in extra]
    if candidates is not None:
        parts += ["--candidates", f"'{candidates}'"]
    return " ".join(parts)


def write_report(
    results_dir: str | Path, out_dir: str | Path | None = None, reference: str = "3D",
    extra: list[ExtraRow] | tuple[ExtraRow, ...] = (), candidates: str | None = None,
) -> str:
    """Writes ``table.md``, ``table.csv`` and ``figure.png`` and returns the Markdown table.

    Args:
        results_dir: A sweep's output directory.
        out_dir: Where to write; default ``results_dir``.
        reference: The family the others are tested against.
        extra: Rows from other final sweeps (see :class:`ExtraRow`).
        candidates: A regular expression: only the candidates whose name it matches
            (``re.search``) take part, e.g. a grid's original rates before it was extended.
    """
    out = Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = None if candidates is None else re.compile(candidates)
    records = [r for r in load_records(results_dir)
               if pattern is None or pattern.search(r.candidate_name)]
    if pattern is not None and not records:
        raise ValueError(f"no runs in {results_dir} match --candidates {candidates!r}")
    for row in extra:
        added = row.records()
        taken = {(r.family, r.train_videos) for r in records}
        clash = sorted({r.train_videos for r in added if (r.family, r.train_videos) in taken})
        if clash:  # two final sweeps' candidates would compete in one selection
            raise ValueError(f"--add {row.label}={row.results_dir}:{row.family}: the table "
                             f"already has {row.label} rows at {clash} videos; give it another "
                             "label")
        records += added
    config = load_saved_config(results_dir)
    sizes = {r.train_videos for r in records} | set(config.sizes if config else ())
    selections = select_configurations(records)
    rows = table_rows(selections, sorted(sizes), reference)
    missing = missing_runs(config, records, pattern) if config else []
    planned = ({(s.family, s.train_videos, s.candidate.name, s.run) for s in plan_runs(config)}
               if config else None)
    markdown = markdown_table(rows, selections, missing, reference, planned)
    command = report_command(results_dir, out_dir, reference, extra, candidates)
    markdown += f"\nWritten by `{command}`.\n"
    write_text_atomic(out / "table.md", markdown)
    write_csv(rows, out / "table.csv")
    plot_figure(rows, out / "figure.png",
                f"{out.name}: * paired t-test vs {reference}, Holm p < "
                f"{SIGNIFICANCE_LEVEL}")
    return markdown


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_ttn.report",
        description="Table 2 and Figure 3 from a sweep's result files.",
    )
    parser.add_argument("results_dir", help="the sweep's output_dir")
    parser.add_argument("--out", help="output directory (default: results_dir)")
    parser.add_argument("--reference", default="3D", help="family the others are tested against")
    parser.add_argument("--add", action="append", default=[], metavar="LABEL=DIR:FAMILY",
                        help="also report DIR's runs of FAMILY as the row LABEL (a final sweep "
                             "on the same run indices, e.g. another selection rule); repeatable")
    parser.add_argument("--candidates", metavar="REGEX",
                        help="report only the candidates whose name matches (re.search), e.g. "
                             "a grid's rates before it was extended")
    args = parser.parse_args(argv)
    if args.candidates is not None:
        try:
            re.compile(args.candidates)
        except re.error as e:
            parser.exit(2, f"error: --candidates {args.candidates!r} is not a regular "
                           f"expression: {e}\n")
    if not Path(args.results_dir, "runs").is_dir():
        parser.exit(2, f"error: {args.results_dir} has no runs/ directory of sweep results\n")
    try:
        extra = [ExtraRow.parse(text) for text in args.add]
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    try:
        markdown = write_report(args.results_dir, args.out, args.reference, extra,
                                args.candidates)
    except ValueError as e:
        parser.exit(2, f"error: {e}\n")
    print(markdown, end="")
    print(f"wrote table.md, table.csv and figure.png into {args.out or args.results_dir}")
