"""The one exception type of the launcher: bad input that the user can fix."""
from __future__ import annotations


class LaunchError(ValueError):
    """A job cannot be launched as asked; the message names the problem and the fix.

    ``hvdtrain`` catches it, prints the message on stderr and exits with status 2.
    """


class ScaffoldError(ValueError):
    """``hvdtrain new`` cannot create the project as asked; the message names the problem and the fix."""
