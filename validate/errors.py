"""The one error class of validate."""


class ReplayError(ValueError):
    """A plan cannot be replayed or a profile cannot be measured here: the message says why."""
