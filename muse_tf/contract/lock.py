"""One process at a time in a directory: a lock file names the process working there.

Any package may use it (``hold(path, what, advice)``): training, evaluation and export hold the lock
of the run directory they work in while they run (``RunDir.hold``); a second such command is refused
with one line naming the holder: pid, host, command and start time, and what to do instead.
The holder keeps an exclusive ``flock`` on the file, which the kernel
releases when the process dies however it ends; the file's content only names the holder and is
emptied on a normal exit. A content left by a process that is gone (same host, no such process, or
another process under its pid) is stale: the next command takes the lock over and says so. A lock
held from another host cannot be checked from here: it is refused, saying which file to delete once
that process is known to be gone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator

from muse_tf import cli


class BusyError(cli.UsageError, RuntimeError):
    """Another process holds the directory's lock."""


def _process_identity(pid: int) -> str | None:
    """The boot and the start time of process ``pid`` (Linux ``/proc``): tells a process from a
    later one that reuses its pid. None where ``/proc`` does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f"{boot}/{fields[19]}"  # field 22 of stat: start time in clock ticks after boot


def record(command: str | None = None) -> dict:
    """The record naming this process (``command`` default: its command line)."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command or shlex.join([os.path.basename(sys.executable), *sys.argv]),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "process": _process_identity(os.getpid()),
    }


def _is_running(holder: dict) -> bool:
    """Whether ``holder`` (a lock record of this host) is still running."""
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    recorded, current = holder.get("process"), _process_identity(int(holder["pid"]))
    return recorded is None or current is None or recorded == current


def describe(holder: dict) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, running `{holder.get('command')}` "
            f"since {holder.get('started')}")


def _read(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    return parse(os.read(fd, 1 << 16).decode(errors="replace"))


def parse(text: str) -> dict | None:
    """The holder a lock file's ``text`` names; None for a free (empty) lock; a torn record names
    an unknown holder."""
    text = text.strip()
    if not text:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {"pid": "?", "host": "?", "command": "?", "started": "?"}
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def hold(
    path: str, what: str, advice: str = "wait for it to end", command: str | None = None
) -> Iterator[None]:
    """Holds the lock file ``path`` (created if needed) for the ``with`` block.

    Args:
        what: the directory it guards, for the messages.
        advice: what the refused user can do instead, ending the refusal's line (e.g. "wait for
            it to end, or use another --model-dir").
        command: the command to name in the record; default this process's command line.

    Raises:
        BusyError: when a running process (or one on another host) holds it.
    """
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, what, advice)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record(command)).encode())
        os.fsync(fd)
        yield
    finally:
        os.ftruncate(fd, 0)  # free, whether the block ended or failed: only a killed process
        os.close(fd)  # leaves its record behind; closing releases the flock


def _acquire(fd: int, path: str, what: str, advice: str) -> None:
    busy = f"{what} is in use by "
    then = f"; {advice}."
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        for _ in range(20):  # the holder writes its record just after taking the flock
            holder = _read(fd)
            if holder is not None:
                break
            time.sleep(0.05)
        raise BusyError(f"{busy}{describe(holder or {})}{then}") from None
    except OSError:
        pass  # a filesystem without flock: the record below decides alone
    holder = _read(fd)
    if holder is None:
        return
    if holder.get("host") != socket.gethostname():
        raise BusyError(f"{busy}{describe(holder)}{then} If that process is gone, delete {path}.")
    if _is_running(holder):
        raise BusyError(f"{busy}{describe(holder)}{then}")
    print(f"Taking over the stale lock {path}: {describe(holder)} is gone.", flush=True)
