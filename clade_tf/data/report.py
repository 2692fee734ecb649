"""Messages about the data that are printed once per process.

The training data, the sample batch, `--label-nc auto` and `python -m train.prepare`
each open the same folder; a skipped file is worth one line on stderr, not one per
opening. Every module of `clade_tf.data` reports through here.
"""

import sys
import threading

_REPORTED = set()
_LOCK = threading.Lock()


def report_once(message, key=None):
    """Prints `message` on stderr unless a message with the same `key` (default: the
    message itself) was printed before in this process. Returns whether it printed."""
    key = message if key is None else key
    with _LOCK:
        if key in _REPORTED:
            return False
        _REPORTED.add(key)
    print(message, file=sys.stderr)
    return True


def forget_reported():
    """Forgets every message printed so far, so that each is printed again once
    (for a fresh start inside one process, e.g. a test)."""
    with _LOCK:
        _REPORTED.clear()
