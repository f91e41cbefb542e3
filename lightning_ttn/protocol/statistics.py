"""Model selection and the tests of the report, from run records only (no Lightning).

Selection (paper Section 3.4): per family and training-set size, the candidate with the highest
mean validation accuracy of its tested weights; its runs' test accuracies give the mean and the
standard error. Families are compared with the reference family by paired two-sided t-tests
over the runs both have (run r of every family is trained on the same videos), Holm-corrected
over all the comparisons of one table.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import stats

from lightning_ttn.training.record import RunRecord, TransformDrift

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
        alternatives: Every candidate's mean validation accuracy (the grid).
    """

    candidate: str
    mean_val_acc: float
    test_accs: dict[int, float]
    num_parameters: int
    records: tuple[RunRecord, ...]
    alternatives: dict[str, float]

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
        """Θ drift averaged over the runs and the TT layers (max fields: the largest)."""
        drifts = [d for r in self.records for d in r.transforms]
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


def select_configurations(records: list[RunRecord]) -> dict[tuple[str, int], Selection]:
    """The model selection for every ``(family, train_videos)`` with results.

    Candidates are compared on the runs they all finished, i.e. on the same training videos (on
    a partial sweep one candidate may have more runs than another); if they share no run, each
    on its own runs. Ties go to the first candidate name in sorted order.
    """
    groups: dict[tuple[str, int], dict[str, list[RunRecord]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for record in records:
        groups[(record.family, record.train_videos)][record.candidate_name].append(record)
    selections = {}
    for key, by_candidate in groups.items():
        shared = set.intersection(*({r.run for r in runs} for runs in by_candidate.values()))
        mean_val = {
            name: float(np.mean([tested_val_acc(r) for r in runs if r.run in shared]
                                or [tested_val_acc(r) for r in runs]))
            for name, runs in by_candidate.items()
        }
        best = max(sorted(mean_val), key=mean_val.__getitem__)
        runs = sorted(by_candidate[best], key=lambda r: r.run)
        selections[key] = Selection(
            candidate=best,
            mean_val_acc=mean_val[best],
            test_accs={r.run: float(r.test_acc) for r in runs},
            num_parameters=runs[0].num_parameters,
            records=tuple(runs),
            alternatives=mean_val,
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


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted
