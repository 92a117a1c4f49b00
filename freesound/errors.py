"""The one exception family the CLI turns into a one-sentence message (no traceback)."""


class FreesoundError(Exception):
    """Something the user can fix: a missing file, a bad config key, an unknown name."""
