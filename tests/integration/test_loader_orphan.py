"""The loader child does not outlive the node that started it.

A real process tree: an intermediate Python process (standing in for `bridgestat-node
serve`, which waits on its loader exactly so) starts `python -m bridgestat.node.loader` and
is SIGKILLed while the loader is still busy: here it waits for a request on a pipe whose
writing end the test keeps open, as it would be reading a large export; neither an end of
file nor a broken pipe tells it anything. It must notice that its parent is gone and exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-m", "bridgestat.node.loader"],
                         stdin=int(sys.argv[1]), stdout=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


def test_a_loader_whose_node_was_killed_exits() -> None:
    request, keep_open = os.pipe()  # the loader's stdin; the test holds the writing end
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(request)], pass_fds=(request,),
                              stdout=subprocess.PIPE, text=True)
    os.close(request)
    try:
        assert parent.stdout is not None
        loader = int(parent.stdout.readline())
        time.sleep(1.0)  # the loader is up and waiting for its request
        assert _running(loader), "the loader should wait while its node lives"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10  # the watch looks every 0.5 s
        while _running(loader) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(loader), "the loader outlived its node"
    finally:
        os.close(keep_open)
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
