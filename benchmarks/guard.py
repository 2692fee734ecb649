"""Guarded child processes: every export and timing job of the benchmarks runs in its
own `python -c` child (cwd: the repository root) whose resident memory is watched, so a
model that needs more than the machine has fails its own row instead of taking the
machine down, and the memory it used is returned to the system between jobs.

Only the standard library is imported here: the guard must not cost a TensorFlow import.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL_SECONDS = 0.1


def memory_total_mb():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemTotal")) / 1024


def default_memory_limit_mb():
    """The guard's default limit for a child process: 75 % of this machine's RAM."""
    return 0.75 * memory_total_mb()


def _rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS")), 0) / 1024
    except OSError:  # exited between poll() and open()
        return 0.0


def run_guarded(code, limit_mb, cwd=ROOT):
    """Runs `python -c code` in a child (in `cwd`: another checkout runs its own code),
    sampling its resident memory every 100 ms and killing it above `limit_mb`.
    Returns (returncode, stdout, stderr, peak_mb, killed)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=err, cwd=cwd, text=True,
                             env={**os.environ, "PYTHONPATH": cwd})
        peak, killed = 0.0, False
        try:
            while p.poll() is None:
                rss = _rss_mb(p.pid)
                peak = max(peak, rss)
                if rss > limit_mb:
                    killed = True
                    break
                time.sleep(POLL_SECONDS)
        finally:  # over the limit, or the parent interrupted: the child goes too
            if p.poll() is None:
                p.kill()
                p.wait()
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), peak, killed


def failure_line(rc, stderr, peak, killed, limit_mb):
    """One line saying why a guarded child failed (`run_guarded`'s results)."""
    if killed:
        return f"killed: resident memory above {limit_mb:.0f} MB; peak seen {peak:.0f} MB"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {rc}")[:200]


def call_guarded(module, func, args, limit_mb, cwd=ROOT):
    """`module.func(*args)` in a guarded child (`run_guarded`); its JSON-able result is
    returned as `(result, None, peak_mb)`, a failure as `(None, one-line reason, peak_mb)`."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}(*{tuple(args)!r})))"
    rc, out, err, peak, killed = run_guarded(code, limit_mb, cwd)
    if rc != 0 or killed:
        return None, failure_line(rc, err, peak, killed, limit_mb), peak
    # the result is the last line: libraries may print to stdout before it
    return json.loads(out.strip().splitlines()[-1]), None, peak


def exit_on_sigterm():
    """SIGTERM -> SystemExit, so `finally` blocks kill the running child and remove the
    temporary export directories (else a killed benchmark leaves GBs behind in /tmp)."""
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
