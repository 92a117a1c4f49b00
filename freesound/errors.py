"""The one exception family the CLI turns into a one-sentence message (no traceback), and the
warning family it shows as one ``warning:`` line."""


class FreesoundError(Exception):
    """Something the user can fix: a missing file, a bad config key, an unknown name."""


class FreesoundWarning(UserWarning):
    """Work went on, but differently from what the user may assume (e.g. a clip was cropped)."""
