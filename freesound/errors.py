"""The one exception family the CLI and the kernel turn into a one-sentence message (no
traceback), and the warning family they show as one ``warning:`` line."""

from __future__ import annotations

import contextlib
import warnings


class FreesoundError(Exception):
    """Something the user can fix: a missing file, a bad config key, an unknown name."""


class FreesoundWarning(UserWarning):
    """Work went on, but differently from what the user may assume (e.g. a clip was cropped)."""


@contextlib.contextmanager
def one_line_warnings(echo):
    """Within the block, show each ``FreesoundWarning`` as one ``warning: <message>`` line through
    ``echo`` (a callable taking the line); other warnings as Python shows them.

    Processes forked inside the block (feature and prediction workers) inherit it.
    """
    show_python_warning = warnings.showwarning

    def show(message, category, *args, **kwargs):
        if issubclass(category, FreesoundWarning):
            echo(f"warning: {message}")
        else:
            show_python_warning(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
