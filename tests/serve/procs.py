"""Processes of the serving tests: which are still running, which a process started."""

import os


def alive(pids: list[int]) -> list[int]:
    """The processes among ``pids`` still running (a zombie waiting to be reaped is not)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    out.append(pid)
        except FileNotFoundError:
            pass
        except OSError:  # no /proc: ask the process
            try:
                os.kill(pid, 0)
                out.append(pid)
            except ProcessLookupError:
                pass
    return out


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs ...), read from /proc (Linux)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out
