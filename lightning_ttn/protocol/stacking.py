"""Which sweep runs are trained together as one stack (``runner.train_stack``): runs of one
candidate and training-set size, which differ only in their run index."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_ttn.protocol.schema import RunSpec


def check_stack(specs: Sequence[RunSpec]) -> None:
    """Checks that ``specs`` can be one stack: one family, candidate, size and recipe, distinct
    run indices.

    Raises:
        ValueError: they cannot (the message names what differs).
    """
    if not specs:
        raise ValueError("a stack needs at least one run")
    first = specs[0]
    for spec in specs[1:]:
        differs = [
            what for what, a, b in (
                ("family", spec.family, first.family),
                ("candidate", spec.candidate, first.candidate),
                ("training-set size", spec.train_videos, first.train_videos),
                ("recipe", spec.recipe, first.recipe),
            ) if a != b
        ]
        if differs:
            raise ValueError(
                f"a stack trains runs of one candidate and size (only the run index differs): "
                f"{spec.run_id} differs from {first.run_id} in {', '.join(differs)}"
            )
    runs = [spec.run for spec in specs]
    if len(set(runs)) != len(runs):
        raise ValueError(f"a stack must not train a run twice, got run indices {runs}")


def stack_groups(specs: Sequence[RunSpec], stack: int) -> list[list[RunSpec]]:
    """Splits runs into stacks of at most ``stack`` runs of one family, candidate and size.

    The stacks are in the order their first runs appear in ``specs`` (so stacks of one keep
    the order of ``specs``: run index outermost), runs in their order within a stack.
    """
    if stack < 1:
        raise ValueError(f"stack must be >= 1, got {stack}")
    groups: dict[tuple, list[int]] = {}
    for position, spec in enumerate(specs):
        key = (spec.family, spec.candidate.name, spec.train_videos)
        groups.setdefault(key, []).append(position)
    stacks = [g[i:i + stack] for g in groups.values() for i in range(0, len(g), stack)]
    return [[specs[p] for p in positions] for positions in sorted(stacks)]
