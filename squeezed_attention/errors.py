"""The project's single user-facing exception, re-exported so this package has one import point for it."""

from squeeze_mobile.errors import SqueezeError, reason_of

__all__ = ["SqueezeError", "reason_of"]
