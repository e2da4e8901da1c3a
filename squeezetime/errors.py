"""Re-export of the project's single user-facing exception (defined in squeeze_mobile.errors)."""

from squeeze_mobile.errors import SqueezeError

__all__ = ["SqueezeError"]
