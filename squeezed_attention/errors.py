"""The project's single user-facing exception, re-exported so this package has one import point for it."""

from squeeze_mobile.errors import SqueezeError

__all__ = ["SqueezeError"]
