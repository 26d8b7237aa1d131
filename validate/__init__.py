"""Validation with torch: measure this machine, replay a plan, report predicted vs measured.

Needs torch (``pip install 'tierplan[validate]'``); nothing else in tierplan imports it.
"""

from validate.errors import ReplayError

__all__ = ["ReplayError"]
