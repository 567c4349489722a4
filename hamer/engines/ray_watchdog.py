"""The watchdog of a local Ray that a driver started: when the driver ends, however it ends (SIGKILL included), every
process of that Ray is killed, so that none is left behind.

Ray fate-shares the processes a driver starts itself (GCS, raylet) through ``PR_SET_PDEATHSIG``, but not the ones the
raylet starts: its dashboard and runtime-env agents, reparented to init, catch SIGTERM and stay, and workers may outlive
it for a while. The driver marks the environment of the Ray it starts with ``HAMER_RAY_MARK=<token>``
(:func:`environment`; every Ray process inherits it: the raylet's children from the raylet) and starts this script
beforehand, unmarked, in its own session, holding its stdin. When stdin closes (the driver released it, exited or was
killed) or the driver is no longer its parent, the script SIGKILLs every process of this user whose environment carries
the mark, every 0.1 s, until none has been seen for half a second: a process forked before its parent was killed shows
in the next look (a process being killed cannot fork), so five empty looks in a row mean none is left.

Run as ``python ray_watchdog.py TOKEN`` (a script: it imports nothing of ``hamer``); Linux only (``/proc``).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

MARK = "HAMER_RAY_MARK"
GIVE_UP_S = 60.0
QUIET_S = 0.5


def environment(token: str) -> dict[str, str]:
    """What the driver adds to the environment of the Ray it starts: the mark, and ``SPT_NOENV=1``: a process that
    sets a title longer than its command line (Ray's agents, through ``setproctitle``) would otherwise write it over
    its environment in ``/proc``, the mark included, and outlive the driver (Ray's agents, by a minute)."""
    return {MARK: token, "SPT_NOENV": "1"}


def marked(token: str) -> list[int]:
    """The pids of the live processes whose environment holds ``MARK=token`` (other users' are unreadable)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(name))
        except OSError:  # gone, or not ours
            continue
    return found


def kill_marked(token: str, give_up_s: float = GIVE_UP_S) -> bool:
    """SIGKILL the marked processes until none has been seen for ``QUIET_S`` (one forked meanwhile is caught too);
    False if some remain after ``give_up_s``."""
    deadline = time.monotonic() + give_up_s
    last_seen = time.monotonic()
    while time.monotonic() - last_seen < QUIET_S:
        pids = marked(token)
        if pids:
            if time.monotonic() > deadline:
                return False
            last_seen = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
    return True


def wait_for_driver(driver: int) -> None:
    """Until stdin closes or the driver (this process's parent) is gone, whichever is seen first."""
    while os.getppid() == driver:
        ready, _, _ = select.select([sys.stdin], [], [], 0.5)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            return


def main() -> int:
    (token,) = sys.argv[1:]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the driver
    wait_for_driver(os.getppid())
    return 0 if kill_marked(token) else 1


if __name__ == "__main__":
    sys.exit(main())
