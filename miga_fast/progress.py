"""The one progress bar of the package: tqdm (`tqdm.auto`: a notebook widget in Jupyter, a
text bar in a terminal), off when `enabled` is False."""

from __future__ import annotations


def progress_bar(
    iterable=None,
    total: int | None = None,
    desc: str | None = None,
    enabled: bool = True,
    unit: str = "it",
    initial: int = 0,
):
    """A tqdm bar over `iterable` (or a manual one: call .update(n)); `enabled=False` draws
    nothing and costs nothing."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, initial=initial, dynamic_ncols=True)
