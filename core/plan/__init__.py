"""Batch plans: every batch of every epoch fixed ahead of training. Re-exports only.

``build`` (the frozen :class:`BatchPlan` record, its build and fingerprint),
``shard`` (per rank), ``verify`` (against a rebuild), ``store`` (save, load)
and ``cursor`` (a resumable position in a plan).
"""

from laden.plan.build import BatchPlan
from laden.plan.cursor import PlanCursor
from laden.plan.store import FORMAT_VERSION, KIND
from laden.plan.verify import PlanCheck

__all__ = ["FORMAT_VERSION", "KIND", "BatchPlan", "PlanCheck", "PlanCursor"]
