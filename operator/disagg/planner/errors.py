"""The planner's exception tree.

Every error the planner raises on bad input derives from :class:`PlannerError` (a ``ValueError``)
so the CLI can turn all of them into one clean message and exit status 2, while callers that want
to tell "unknown preset" from "impossible workload" still can.
"""

from __future__ import annotations


class PlannerError(ValueError):
    """Bad input to the planner: the message says what and how to fix it."""


class UnknownPresetError(PlannerError, LookupError):
    """A GPU or model name that is not a preset (the message lists the known ones)."""


class ModelConfigError(PlannerError):
    """A Hugging Face ``config.json`` the planner cannot turn into a model shape."""


class CalibrationError(PlannerError):
    """A calibration file that is malformed or belongs to another GPU."""
