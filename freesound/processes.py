"""Child processes that end with the process that started them.

A killed parent (``kill -9``) cannot stop its children itself: a feature-cache worker or a fold
process would otherwise go on computing, and writing, as an orphan.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: prctl's option that sends the calling process a signal when its parent dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Call first thing in a child process: on Linux, end it (SIGTERM) when ``parent``, the
    process that started it, dies. A no-op elsewhere.

    Parameters
    ----------
    parent : int, the pid of the process that started this one (``os.getpid()`` there)
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before the request took effect
            os._exit(1)
