"""The one error class of costmodel."""


class WorkloadError(ValueError):
    """A model config or workload is malformed or unsupported: the message names the field,
    the rule, the value and the file."""
