"""The project's shared core: the one user-facing error type and the one way files are written.

Every package (squeezetime, squeezed_attention, export, bench) imports these from here, so none of them needs
the video model package to report an error or write an artifact.
"""

from .errors import SqueezeError, SqueezeWarning

__all__ = ["SqueezeError", "SqueezeWarning"]
