"""Progress bars that read well both in a terminal and in a log.

``progress_bar`` is the package's one progress bar. On a terminal it is a tqdm bar, redrawn in
place. Anywhere else (a CI log, a Kaggle kernel log, ``> file``) a redraw is a carriage return
that log viewers show as a new line, thousands of them for a real dataset; there it is a
``LogProgress`` instead: one whole line, in tqdm's own format, each time another
``LOG_PERCENT_STEP`` percent is done or ``LOG_INTERVAL_S`` seconds have passed, whichever comes
first. A transient bar (``leave=False``, e.g. one training epoch, which the trainer summarises in a
line of its own) writes only the time-based lines, so a slow pass still shows that it is alive.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

# Not tqdm.auto: its asyncio bar calls iter() on the iterable when built, so a DataLoader starts a
# second set of workers for nothing (and draws a seed from torch's generator) every epoch.
from tqdm.autonotebook import tqdm

#: A log line each time this much more of the total is done (percent).
LOG_PERCENT_STEP = 10
#: ... and at least every this many seconds while work goes on.
LOG_INTERVAL_S = 60.0


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 leave: bool = True, enabled: bool = True, file=None):
    """A progress bar over ``iterable`` (or updated by hand), fit for where it is written.

    Parameters
    ----------
    iterable : optional, iterated through the bar
    total : int, optional; default ``len(iterable)`` when it has one
    desc, unit : the bar's label and the unit of one step
    initial : steps already done (a resumed run)
    leave : keep the finished bar (True) or let it vanish (False: in a log, no percent lines)
    enabled : False shows nothing
    file : text stream, default ``sys.stderr`` (looked up at call time)

    Returns
    -------
    ``tqdm`` on a terminal (or when disabled), else ``LogProgress``; both iterate, take
    ``update(n)``, ``set_postfix(**values)`` and ``close()``, are context managers, and give
    ``external_write_mode()``, a context in which other lines can be printed without garbling the bar.
    """
    file = sys.stderr if file is None else file
    if not enabled or is_terminal(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, disable=not enabled,
                    file=file)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave, file=file)


class LogProgress:
    """A progress bar for logs: whole lines, every ``step_percent`` percent or ``interval_s`` seconds.

    Parameters are those of ``progress_bar``, plus ``step_percent``, ``interval_s`` and ``clock``
    (a monotonic clock in seconds). A line is written when the done fraction enters a new
    ``step_percent`` bucket (only if ``leave``), or when ``interval_s`` have passed since the last
    line; ``close`` writes the final count unless it is already the last line shown. Lines are
    tqdm's meter without the bar: ``"features:  40% 480/1200 [00:34<00:51, 14.1clip/s]"``.
    """

    def __init__(self, iterable=None, *, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 leave: bool = True, file=None, step_percent: float = LOG_PERCENT_STEP,
                 interval_s: float = LOG_INTERVAL_S, clock=time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.leave = leave
        self.file = sys.stderr if file is None else file
        self.step_percent = step_percent
        self.interval_s = interval_s
        self._clock = clock
        self._start = self._last_time = clock()
        self._initial = initial
        self._shown_n = initial
        self._postfix = ""
        self._closed = False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _bucket(self, n: int) -> int:
        return int(100 * n / (self.total * self.step_percent)) if self.total else 0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; write a line when a percent step or the interval is reached."""
        before, self.n = self.n, self.n + n
        now = self._clock()
        crossed = self.leave and self._bucket(self.n) > self._bucket(before)
        if crossed or now - self._last_time >= self.interval_s:
            self._show(now)

    @contextmanager
    def external_write_mode(self, file=None, nolock=False):
        """A context for writing other lines while the bar is shown, as tqdm's of the same name
        (which clears its bar and redraws it after); a log's whole lines need nothing."""
        yield

    def set_postfix(self, **values) -> None:
        """Values shown at the end of the next line, as tqdm does (``loss=0.1234``)."""
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """Write the final count (a kept bar) unless it was just shown."""
        if self._closed:
            return
        self._closed = True
        if self.leave and self.n != self._shown_n:
            self._show(self._clock())

    def _show(self, now: float) -> None:
        self._last_time, self._shown_n = now, self.n
        elapsed = now - self._start
        line = tqdm.format_meter(self.n, self.total, elapsed, ncols=0, prefix=self.desc, unit=self.unit,
                                 postfix=self._postfix or None, initial=self._initial)
        self.file.write(line + "\n")
        self.file.flush()
