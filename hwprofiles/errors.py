"""The one error class of hwprofiles."""


class ProfileError(ValueError):
    """A hardware profile or an override is malformed: the message names the field, the rule,
    the value and the file."""
