"""Rebuilding projections from the log.

* `rebuild`: drop a projection's tables and fold the whole log into them again.
* `build_beside`: fold a new version of a projection into tables of its own while readers
  keep using the current version, then switch readers over in one statement once it has
  caught up. The old version's tables stay until `retire` drops them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from projections.base import Projection, View
from projections.runner import EventSource, ProjectionRunner
from projections.store import ProjectionStore

Progress = Callable[[int, int], None]


def rebuild(
    source: EventSource,
    store: ProjectionStore,
    projections: Sequence[Projection],
    *,
    batch_size: int | None = None,
    on_batch: Progress | None = None,
) -> int:
    """Drop and rebuild `projections` from the whole log. Returns the records folded.
    `batch_size`: records per transaction (default: the runner's catch-up batch)."""
    for projection in projections:
        store.drop(projection)
    runner = ProjectionRunner(source, store, projections, batch_size=batch_size, on_batch=on_batch)
    return runner.catch_up()


def build_beside(
    source: EventSource,
    store: ProjectionStore,
    new_version: Projection,
    *,
    batch_size: int | None = None,
    on_batch: Progress | None = None,
) -> int:
    """Build `new_version` beside the active version, then make it the active one."""
    active = store.active_version(new_version.name)
    if active == new_version.version:
        raise ValueError(
            f"{new_version.name} v{new_version.version} is already the active version;"
            " use rebuild to rebuild it in place"
        )
    runner = ProjectionRunner(
        source, store, [new_version], batch_size=batch_size, on_batch=on_batch
    )
    folded = runner.catch_up()
    # Writers may have added events while we caught up; one more pass closes the gap
    # before readers switch (the live runner keeps it current from then on).
    folded += runner.catch_up()
    store.activate(new_version)
    return folded


def retire(store: ProjectionStore, old_version: Projection) -> None:
    """Drop an old version's tables once readers have moved off it."""
    if store.active_version(old_version.name) == old_version.version:
        raise ValueError(f"{old_version.name} v{old_version.version} is still the active version")
    store.drop(old_version)


def read_active(store: ProjectionStore, candidates: Sequence[Projection]) -> dict[str, View]:
    """The rows readers should see: for each projection name, its active version's view."""
    views: dict[str, View] = {}
    for projection in candidates:
        if store.active_version(projection.name) in (projection.version, None):
            views[projection.name] = store.load_view(projection)
    return views
