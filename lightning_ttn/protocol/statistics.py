"""Model selection and the tests of the report, from run records only (no Lightning).

Selection (paper Section 3.4): per family and training-set size, the candidate with the highest
mean validation accuracy of its tested weights (ties and diverged candidates: :data:`TIE_RULE`,
ours); its runs' test accuracies give the mean and the standard error. Families are compared
with the reference family by paired two-sided t-tests over the runs both have (run r of every
family is trained on the same videos), Holm-corrected over all the comparisons of one table.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from lightning_ttn.training.record import COLLAPSE_THRESHOLD, RunRecord, TransformDrift

SIGNIFICANCE_LEVEL = 0.05


def tested_val_acc(record: RunRecord) -> float:
    """Validation accuracy of the weights that were tested (the selection criterion): the best
    validation accuracy, or the last one when the recipe tests the last weights."""
    if record.recipe.get("tested_weights") == "last" and record.val_acc_history:
        return float(record.val_acc_history[-1][1])
    return float(record.best_val_acc)


@dataclass(frozen=True)
class Selection:
    """The selected candidate of one family at one training-set size.

    Attributes:
        candidate: Name of the selected candidate.
        mean_val_acc: Mean validation accuracy of its tested weights (the criterion), over the
            runs all candidates share.
        test_accs: Test accuracy of each of its runs, by run index.
        num_parameters: Trainable parameters of the model.
        records: Its runs' records.
        alternatives: Every candidate's mean validation accuracy (the grid; NaN: diverged).
        candidates: Every candidate's :class:`CandidateSummary`.
    """

    candidate: str
    mean_val_acc: float
    test_accs: dict[int, float]
    num_parameters: int
    records: tuple[RunRecord, ...]
    alternatives: dict[str, float]
    candidates: dict[str, CandidateSummary] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Mean test accuracy over the runs."""
        return float(np.mean(list(self.test_accs.values())))

    @property
    def stderr(self) -> float:
        """Standard error of the mean test accuracy (std with ddof=1 / sqrt(n); NaN with one
        run)."""
        values = list(self.test_accs.values())
        if len(values) < 2:
            return math.nan
        return float(np.std(values, ddof=1) / math.sqrt(len(values)))

    @property
    def candidate_fields(self) -> dict:
        """The selected candidate as in the sweep file (widths and recipe overrides)."""
        return dict(self.records[0].candidate or {})

    def drift(self) -> TransformDrift | None:
        """Θ drift averaged over the runs that did not diverge and the TT layers (max fields:
        the largest)."""
        drifts = [d for r in self.records if not r.failed for d in r.transforms]
        if not drifts:
            return None
        return TransformDrift(
            layer="all",
            mean_abs_rotation_deg=float(np.mean([d.mean_abs_rotation_deg for d in drifts])),
            max_abs_rotation_deg=max(d.max_abs_rotation_deg for d in drifts),
            mean_abs_scale_change=float(np.mean([d.mean_abs_scale_change for d in drifts])),
            max_abs_scale_change=max(d.max_abs_scale_change for d in drifts),
            mean_translation_px=float(np.mean([d.mean_translation_px for d in drifts])),
            max_translation_px=max(d.max_translation_px for d in drifts),
        )


# A run "at chance" ends with the training loss of a uniform prediction over 10 classes.
CHANCE_LOSS = math.log(10)
CHANCE_LOSS_TOLERANCE = 0.1
CHANCE_VAL_ACC = 0.2
TIE_RULE = ("equal mean validation accuracies (to 1e-9) go to the smaller learning rate, then "
            "the smaller transform multiplier (transform_lr_scale), then the first name in "
            "sorted order; a candidate with a diverged run is selected only if every one has one")


def at_chance(record: RunRecord) -> bool:
    """The run never learned: its last training loss is within ``CHANCE_LOSS_TOLERANCE`` of
    ln 10 and its tested validation accuracy is below ``CHANCE_VAL_ACC`` (chance is 0.1)."""
    if record.failed or not record.train_loss_history:
        return False
    last_loss = record.train_loss_history[-1][1]
    return (abs(last_loss - CHANCE_LOSS) < CHANCE_LOSS_TOLERANCE
            and tested_val_acc(record) < CHANCE_VAL_ACC)


@dataclass(frozen=True)
class CandidateSummary:
    """One candidate of a family at one size, as selection saw it.

    Attributes:
        name: Candidate name.
        mean_val_acc: Mean validation accuracy of its tested weights over the shared runs.
        runs: Runs compared (those every candidate of the family and size has).
        at_chance: Of those, runs stuck at chance (:func:`at_chance`).
        diverged: Of all its runs, runs whose training loss became NaN or infinite.
        extra_runs: Run indices it has beyond the shared ones (not used for selection).
        lr: Its learning rate.
        transform_lr_scale: Its transform-rate multiplier.
    """

    name: str
    mean_val_acc: float
    runs: int
    at_chance: int
    diverged: int
    extra_runs: tuple[int, ...]
    lr: float
    transform_lr_scale: float

    @property
    def eligible(self) -> bool:
        """Whether selection may choose it (no diverged run)."""
        return self.diverged == 0

    def tie_key(self) -> tuple[float, float, float, str]:
        """Sort key of the selection: best first, then :data:`TIE_RULE`."""
        return (-round(self.mean_val_acc, 9), self.lr, self.transform_lr_scale, self.name)


def recipe_value(record: RunRecord, key: str, default: float) -> float:
    """A recipe field of the run (the candidate's override, else the recipe's, else default)."""
    return float((record.candidate or {}).get(key, record.recipe.get(key, default)))


def _summaries(by_candidate: dict[str, list[RunRecord]]) -> dict[str, CandidateSummary]:
    # Compared on the runs all candidates finished, i.e. on the same training videos (on a
    # partial sweep one candidate may have more runs); if they share none, each on its own.
    shared = set.intersection(*({r.run for r in runs} for runs in by_candidate.values()))
    summaries = {}
    for name, runs in by_candidate.items():
        compared = [r for r in runs if r.run in shared] or runs
        diverged = sum(r.failed for r in runs)
        summaries[name] = CandidateSummary(
            name=name,
            mean_val_acc=float(np.nanmean([tested_val_acc(r) for r in compared])),
            runs=len(compared),
            at_chance=sum(at_chance(r) for r in compared),
            diverged=diverged,
            extra_runs=tuple(sorted(r.run for r in runs if shared and r.run not in shared)),
            lr=recipe_value(runs[0], "lr", math.inf),
            transform_lr_scale=recipe_value(runs[0], "transform_lr_scale", 1.0),
        )
    return summaries


@dataclass(frozen=True)
class HealthSummary:
    """What the selected TT model's kernels compute over time, over its runs and TT layers.

    Attributes:
        energy_profile: Mean ``||W_t|| / ||W_0||`` per transition ``t = 1 .. T-1``.
        collapsed_fraction: Mean fraction of (channel, transition) pairs below 10% of K0's
            energy.
        runs: Runs with a kernel-health record.
    """

    energy_profile: tuple[float, ...]
    collapsed_fraction: float
    runs: int

    def describe(self, drift: TransformDrift | None) -> str:
        """The kernel in words, from these numbers and Θ's drift."""
        low, high = min(self.energy_profile), max(self.energy_profile)
        if self.collapsed_fraction >= 0.5:
            first = next((t for t, e in enumerate(self.energy_profile, start=1)
                          if e < COLLAPSE_THRESHOLD), None)
            where = f" after slice {first - 1}" if first else ""
            return (f"collapsed in time{where}: {self.collapsed_fraction:.0%} of (channel, "
                    "transition) pairs keep < 10% of K0's energy")
        still = drift is None or (drift.mean_abs_rotation_deg < 1
                                  and drift.mean_abs_scale_change < 0.01
                                  and drift.mean_translation_px < 0.05)
        if still and high - low < 0.05 and abs(low - 1) < 0.05:
            return "time-constant: K0 repeated over time (Θ at the identity)"
        words = (f"moving: slices keep {low:.0%}-{high:.0%} of K0's energy")
        if self.collapsed_fraction >= 0.05:
            words += f", {self.collapsed_fraction:.0%} of pairs collapsed"
        return words


def health_summary(records: tuple[RunRecord, ...] | list[RunRecord]) -> HealthSummary | None:
    """Kernel health averaged over the runs that did not diverge and their TT layers."""
    healths = [h for r in records if not r.failed for h in r.kernel_health]
    if not healths:
        return None
    return HealthSummary(
        # Layers may differ in T: per transition, the mean over the layers that have it.
        energy_profile=tuple(
            float(np.mean([h.energy_profile[t] for h in healths if t < len(h.energy_profile)]))
            for t in range(max(len(h.energy_profile) for h in healths))
        ),
        collapsed_fraction=float(np.mean([h.collapsed_fraction for h in healths])),
        runs=sum(any(r.kernel_health) and not r.failed for r in records),
    )


def select_configurations(records: list[RunRecord]) -> dict[tuple[str, int], Selection]:
    """The model selection for every ``(family, train_videos)`` with results.

    The candidate with the highest mean validation accuracy of its tested weights over the runs
    all candidates share; ties and diverged candidates as :data:`TIE_RULE` says.
    """
    groups: dict[tuple[str, int], dict[str, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record in records:
        groups[(record.family, record.train_videos)][record.candidate_name].append(record)
    selections = {}
    for key, by_candidate in groups.items():
        summaries = _summaries(by_candidate)
        # With no eligible candidate (a final sweep's one candidate with a diverged run) the row
        # is still reported, its diverged runs counted.
        ranked = sorted(summaries.values(), key=lambda c: (not c.eligible, c.tie_key()))
        best = ranked[0].name
        runs = sorted(by_candidate[best], key=lambda r: r.run)
        selections[key] = Selection(
            candidate=best,
            mean_val_acc=summaries[best].mean_val_acc,
            test_accs={r.run: float(r.test_acc) for r in runs},
            num_parameters=runs[0].num_parameters,
            records=tuple(runs),
            alternatives={name: s.mean_val_acc for name, s in summaries.items()},
            candidates=summaries,
        )
    return selections


def paired_t_test(first: Selection, second: Selection) -> tuple[float, int]:
    """Paired two-sided t-test of the test accuracies over the runs both selections have.

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


def paired_difference_ci(first: Selection, second: Selection, level: float = 0.95
                         ) -> tuple[float, float]:
    """Confidence interval of the mean paired difference ``first - second`` of test accuracy
    over the runs both have (Student t with n - 1 degrees of freedom; NaNs below 2 runs)."""
    shared = sorted(first.test_accs.keys() & second.test_accs.keys())
    if len(shared) < 2:
        return math.nan, math.nan
    diffs = np.array([first.test_accs[r] - second.test_accs[r] for r in shared])
    half = (stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * diffs.std(ddof=1)
            / math.sqrt(len(diffs)))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted
