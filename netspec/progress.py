"""Progress of the long steps (training, testing, data scans, search, lr-find): on a terminal a tqdm bar with
the rate and the time left (stderr); where stderr is a file or a pipe, a plain line every PIPE_EVERY seconds."""
from __future__ import annotations

import sys
import time


class Progress:
    """Class-level state: one bar at a time, as there is one console. `shown`: a bar is on screen, so a log line
    clears it first (solvers.trainer.say)."""

    shown = False
    PIPE_EVERY = 30.0  # seconds between progress lines when stderr is not a terminal
    _bar = None
    _label = None
    _start = _last = 0.0
    _from = 0  # the count when the current stretch began

    @classmethod
    def update(cls, done: int, total: int, label: str):
        if total <= 0:
            return
        if sys.stderr.isatty():
            cls._terminal(done, total, label)
        else:
            cls._piped(done, total, label)

    @classmethod
    def _terminal(cls, done, total, label):
        from tqdm import tqdm
        if cls._bar is None or cls._label != label or cls._bar.total != total:
            cls.close()
            cls._bar = tqdm(total=total, desc=label, file=sys.stderr, leave=False, dynamic_ncols=True,
                            mininterval=0.2, miniters=1, smoothing=0.1, initial=max(done - 1, 0))
            # (a bar that starts where the work stands, after a test or at a resume, never counts the steps
            # done before it in its rate)
            cls._label = label
        cls._bar.update(done - cls._bar.n)
        cls.shown = True
        if done >= total:
            cls.close()

    @classmethod
    def _piped(cls, done, total, label):
        now = time.monotonic()
        if cls._label != label or done <= cls._from:
            cls._label, cls._start, cls._last, cls._from = label, now, now, done
            return
        if now - cls._last < cls.PIPE_EVERY or done >= total:
            return
        cls._last = now
        rate = (done - cls._from) / max(now - cls._start, 1e-9)  # since this stretch began (after a test, a resume)
        left = (total - done) / rate if rate > 0 else float("inf")
        print(f"{label}: {done}/{total} ({100 * done / total:.0f}%, {rate:.3g}/s, about {_duration(left)} left)",
              file=sys.stderr, flush=True)

    @classmethod
    def clear(cls):
        """Take the bar off the screen for a log line (the next update draws it again)."""
        if cls._bar is not None:
            cls._bar.clear()
        cls.shown = False

    @classmethod
    def close(cls):
        if cls._bar is not None:
            cls._bar.close()
        cls._bar, cls._label, cls.shown = None, None, False


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
