"""Batch plans: every batch of every epoch fixed ahead of training. Re-exports only."""

from laden.plan.build import FORMAT_VERSION, KIND, BatchPlan, PlanCheck

__all__ = ["FORMAT_VERSION", "KIND", "BatchPlan", "PlanCheck"]
