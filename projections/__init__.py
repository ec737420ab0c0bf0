"""The read side: projections folded from the order log.

Each module holds one projection: a fold (`apply` over pure row functions) plus the tables
it keeps. `runner` keeps them up to date in a database, `offline` rebuilds them from an
export with no server, `pointintime` folds the log up to a past instant.
"""

from __future__ import annotations

from projections.audit import AuditTrailProjection
from projections.base import Projection, View
from projections.pnl import PnlProjection
from projections.positions import PositionsProjection
from projections.reports import ExecutionReportsProjection
from projections.statistics import StatisticsProjection


def all_projections() -> list[Projection]:
    """One of each projection, in a fixed order."""
    return [
        PositionsProjection(),
        PnlProjection(),
        ExecutionReportsProjection(),
        StatisticsProjection(),
        AuditTrailProjection(),
    ]


__all__ = [
    "AuditTrailProjection",
    "ExecutionReportsProjection",
    "PnlProjection",
    "PositionsProjection",
    "Projection",
    "StatisticsProjection",
    "View",
    "all_projections",
]
