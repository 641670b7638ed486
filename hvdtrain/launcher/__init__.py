"""Launching, checking and scaffolding hvdtrain jobs: ``hvdtrain run``, ``hvdtrain doctor``, ``hvdtrain new``.

The modules split pure work from side effects: ``config`` and ``hosts`` parse and
validate, ``command`` turns options into an exact launcher argv (``elastic`` adds the
worker counts and host discovery of elastic jobs), ``run`` executes it, and ``doctor``
inspects the installation.
"""
from hvdtrain.launcher.errors import LaunchError

__all__ = ["LaunchError"]
