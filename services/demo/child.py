"""Runs one service as a child that dies with the process that started it: ``python -m services.demo.child
<parent pid> services.<name>``.

Linux's parent-death signal (``PR_SET_PDEATHSIG``) sends the service SIGTERM, its graceful shutdown, when the
starting process dies for any reason, SIGKILL included, so a killed ``aisle demo`` or test run leaves no service
behind. It is set here, in the child itself, because ``Popen(preexec_fn=...)`` is unsafe in a parent that runs
threads (torch, gRPC). Elsewhere the service simply runs. Nothing here imports grpc: the service's ``__main__`` must
configure gRPC's runtime before the first import of it.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(f"the process that started this service ({parent}) has already exited")


def main() -> None:
    parent, module = int(sys.argv[1]), sys.argv[2]
    die_with_parent(parent)
    sys.argv = [sys.argv[0]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
