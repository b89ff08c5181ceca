"""Child-process helpers shared by ``manage.py up`` and the node agent."""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn``: the child gets ``sig`` when its parent dies, even by SIGKILL (Linux only).

    Without it, a supervisor killed with -9 would leave its servers and engines running.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:  # not Linux: nothing to set
        pass


def die_with_parent_kill() -> None:
    die_with_parent(signal.SIGKILL)
