"""Page sets as runs: the unit every layer of replication speaks in. Pure: no I/O, no clock.

Theory of operation. A tracked region is a whole number of pages; what a
dirty-page tracker reports, what a checkpoint carries and what a backup
applies are sets of page indices of one region. They are kept as sorted,
disjoint, non-adjacent *runs* ``(first, count)``: a region written in one
sweep costs one run, not a million indices, and a run maps straight onto one
slice of the region's memory.

Invariants of a `PageRuns` value (checked by `canonical_runs`): every count
is positive, runs are sorted by `first`, and each run ends strictly before
the next one starts minus one (adjacent runs are merged).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Sorted, disjoint, non-adjacent ``(first, count)`` runs of page indices.
PageRuns = tuple[tuple[int, int], ...]


def to_runs(pages: Iterable[int]) -> PageRuns:
    """Page indices, in any order and with repeats, as canonical runs."""
    runs: list[tuple[int, int]] = []
    first = last = -2
    for page in sorted(set(pages)):
        if page < 0:
            raise ValueError(f"page index {page} is negative")
        if page == last + 1:
            last = page
            continue
        if last >= 0:
            runs.append((first, last - first + 1))
        first = last = page
    if last >= 0:
        runs.append((first, last - first + 1))
    return tuple(runs)


def merge_runs(runs: Iterable[tuple[int, int]]) -> PageRuns:
    """Runs that may overlap or touch, in any order, as canonical runs."""
    out: list[tuple[int, int]] = []
    for first, count in sorted(runs):
        if count <= 0 or first < 0:
            raise ValueError(f"run ({first}, {count}) is empty or negative")
        if out and first <= out[-1][0] + out[-1][1]:
            start, length = out[-1]
            out[-1] = (start, max(length, first + count - start))
        else:
            out.append((first, count))
    return tuple(out)


def from_runs(runs: Iterable[tuple[int, int]]) -> list[int]:
    """Every page index the runs cover, in order."""
    return [page for first, count in runs for page in range(first, first + count)]


def page_count(runs: Iterable[tuple[int, int]]) -> int:
    """How many pages the runs cover."""
    return sum(count for _, count in runs)


def canonical_runs(runs: Sequence[tuple[int, int]], pages: int) -> bool:
    """Whether `runs` keep the invariants and lie inside a region of `pages` pages."""
    end = -1
    for first, count in runs:
        if count <= 0 or first <= end or first + count > pages:
            return False
        end = first + count
    return True


def split_runs(runs: Iterable[tuple[int, int]], max_pages: int) -> list[tuple[int, int]]:
    """Runs cut so that none covers more than `max_pages` pages (for bounded frames)."""
    if max_pages <= 0:
        raise ValueError("max_pages must be positive")
    out: list[tuple[int, int]] = []
    for first, count in runs:
        for start in range(first, first + count, max_pages):
            out.append((start, min(max_pages, first + count - start)))
    return out


def batch_runs(runs: Iterable[tuple[int, int]], max_pages: int, max_runs: int) -> list[PageRuns]:
    """Runs grouped into batches of at most `max_pages` pages and `max_runs` runs, in order.

    A run that does not fit the rest of a batch is cut; batches keep the page order.
    """
    if max_pages <= 0 or max_runs <= 0:
        raise ValueError("batches need room for at least one page and one run")
    batches: list[PageRuns] = []
    batch: list[tuple[int, int]] = []
    room = max_pages
    for first, count in runs:
        while count > 0:
            take = min(count, room)
            batch.append((first, take))
            first += take
            count -= take
            room -= take
            if room == 0 or len(batch) == max_runs:
                batches.append(tuple(batch))
                batch = []
                room = max_pages
    if batch:
        batches.append(tuple(batch))
    return batches


@dataclass(frozen=True, slots=True, kw_only=True)
class DirtyPages:
    """The pages of one region written since its tracker was last collected."""

    region: str
    runs: PageRuns

    @property
    def pages(self) -> int:
        return page_count(self.runs)
