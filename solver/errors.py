"""The one error class of solver."""


class PlanError(ValueError):
    """A plan file or a planning request is malformed, or a solver backend is missing."""
