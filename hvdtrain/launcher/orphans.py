"""No orphans: a child that is killed when the process that started it dies, however that process died."""
from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dies_with(parent: int, signum: int) -> Callable[[], None]:
    """A ``preexec_fn`` for a child of ``parent``: it gets ``signum`` when ``parent`` dies (Linux's
    parent-death signal), even when ``parent`` is killed with SIGKILL. (Linux sends it when the thread
    that started the child ends: start it from a thread that lives as long as the process.)"""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            os._exit(127)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signum)

    return arm
