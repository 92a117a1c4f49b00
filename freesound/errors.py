"""The one exception family the CLI and the kernel turn into a one-sentence message (no
traceback), and the warning family they show as one ``warning:`` line."""

from __future__ import annotations

import contextlib
import errno
import warnings
from pathlib import Path


class FreesoundError(Exception):
    """Something the user can fix: a missing file, a bad config key, an unknown name."""


class FreesoundWarning(UserWarning):
    """Work went on, but differently from what the user may assume (e.g. a clip was cropped)."""


#: OSErrors the user fixes, by errno: the sentence ``file_error_sentence`` makes of each. A denied
#: permission may come from a read as well as a write, so its sentence names neither.
FILE_ERROR_SENTENCES = {
    errno.ENOSPC: "cannot write {path}: no space left on the device holding {folder}",
    errno.EDQUOT: "cannot write {path}: the disk quota is exceeded on the device holding {folder}",
    errno.EROFS: "cannot write {path}: {folder} is on a read-only file system",
    errno.EACCES: "cannot use {path}: permission denied in {folder}",
    errno.EPERM: "cannot use {path}: operation not permitted in {folder}",
}


def file_error_sentence(error: OSError) -> str | None:
    """One sentence for a full disk, a read-only folder or a denied permission, naming the file
    and its folder; None for any other error, or one that names no file.

    ``freesound.fileio``'s writers make sure such an error names the file being written.
    """
    template = FILE_ERROR_SENTENCES.get(error.errno)
    if template is None or error.filename is None:
        return None
    path = Path(error.filename)
    return template.format(path=path, folder=path if path.is_dir() else path.parent)


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


def call_recording_warnings(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with every warning it raises recorded instead of shown.

    A worker process hands the warnings to its parent, which shows them there (``warnings.warn``
    of each) and can list the files they name in its summary.

    Returns
    -------
    (the function's result, list of the warning instances, in the order raised)
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = function(*args, **kwargs)
    return result, [record.message for record in caught]
