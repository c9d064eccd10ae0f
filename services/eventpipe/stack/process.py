"""One detached OS process, remembered by a pidfile so a later command can find and stop it.

A process is only ever signalled when its ``/proc/<pid>/cmdline`` still equals the argv the
pidfile recorded: a recycled pid belonging to something else is never touched.

``detach=True`` (what ``eventpipe stack up`` uses) starts the process through a short-lived
launcher, so its parent is init rather than the command that started it. That matters for
Envoy, which asks the kernel (PR_SET_PDEATHSIG) for SIGTERM when its parent exits: started as a
plain child it would die the moment ``eventpipe stack up`` returns.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from eventpipe.core.waiting import DeadlineExceeded, wait_until


def _proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


# Runs in a fresh interpreter: forks, prints the child's pid and exits; the child waits until it
# has been re-parented (so no death signal can be tied to the launcher), starts its own session
# and execs the command with stdout joined to stderr, the log file.
_LAUNCHER = """
import os, sys, time
launcher = os.getpid()
pid = os.fork()
if pid == 0:
    while os.getppid() == launcher:
        time.sleep(0.001)
    os.setsid()
    os.dup2(2, 1)
    os.execvp(sys.argv[1], sys.argv[1:])
print(pid, flush=True)
os._exit(0)
"""


class ManagedProcess:
    """Starts, finds and stops one process; output goes to ``log_path``."""

    def __init__(self, name: str, pid_dir: Path, log_path: Path) -> None:
        self.name = name
        self.pidfile = pid_dir / f"{name}.json"
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None
        self._detached_pid: int | None = None

    def _recorded(self) -> tuple[int, list[str]] | None:
        try:
            data = json.loads(self.pidfile.read_text())
            return int(data["pid"]), [str(a) for a in data["argv"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @property
    def pid(self) -> int | None:
        """The pid of the live process this pidfile describes, or None."""
        if self._popen is not None:
            return self._popen.pid if self._popen.poll() is None else None
        recorded = self._recorded()
        if recorded is None:
            return None
        pid, argv = recorded
        if _proc_cmdline(pid) != argv or _is_zombie(pid):
            return None
        return pid

    def is_running(self) -> bool:
        return self.pid is not None

    def start(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        *,
        detach: bool = False,
    ) -> int:
        """Starts the process in its own session, so terminal signals do not reach it.

        Args:
            detach: re-parent the process to init so it outlives this Python process.
        """
        if self.is_running():
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._popen = None
        self._detached_pid = None
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            if detach:
                launcher = subprocess.run(
                    [sys.executable, "-c", _LAUNCHER, *argv],
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    check=True,
                    timeout=30,
                )
                pid = self._detached_pid = int(launcher.stdout)
                # Until the exec, /proc shows the launcher's command line, not argv.
                wait_until(
                    lambda: _proc_cmdline(pid) == list(argv) or _is_zombie(pid),
                    timeout=10,
                    what=f"{self.name} to exec",
                    interval=0.005,
                )
            else:
                self._popen = subprocess.Popen(
                    list(argv),
                    env=dict(env),
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                pid = self._popen.pid
        self.pidfile.write_text(json.dumps({"pid": pid, "argv": list(argv)}))
        return pid

    def exit_reason(self) -> str | None:
        """Why the process we started is gone (exit code and log tail), or None if alive."""
        if self._popen is not None:
            if self._popen.poll() is None:
                return None
            return f"{self.name} exited with code {self._popen.returncode}\n{self.log_tail()}"
        if self._detached_pid is not None and not self.is_running():
            return f"{self.name} exited\n{self.log_tail()}"
        return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            # Signal the whole group (a JVM a service spawned, say) when the process leads it.
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    def kill(self) -> bool:
        """SIGKILL at once, no grace; returns False if it was not running."""
        pid = self.pid
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        wait_until(lambda: not self.is_running(), timeout=10, what=f"{self.name} to die")
        return True

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``; returns False if it was not running."""
        pid = self.pid
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        self._signal(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not self.is_running(), timeout=timeout, what=f"{self.name} to exit")
        except DeadlineExceeded:
            self._signal(pid, signal.SIGKILL)
            wait_until(lambda: not self.is_running(), timeout=10, what=f"{self.name} to die")
        self.pidfile.unlink(missing_ok=True)
        self._popen = None
        self._detached_pid = None
        return True
