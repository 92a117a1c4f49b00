"""The search's default spaces and its example space, as TOML text.

Plain strings with no imports, so that ``freesound search --help`` is built from them without
loading Optuna or torch; ``search.py`` parses and checks them like any space file.
"""

from __future__ import annotations

import re

#: What ``search`` tries for an experiment when no ``--space`` is given.
DEFAULT_EXPERIMENT_SPACE = """\
"train.lr" = { loguniform = [1e-4, 1e-2] }
"model.params.dropout" = { uniform = [0.0, 0.5] }
"mixers.prob" = { uniform = [0.4, 1.0] }
"transforms.spec_augment_prob" = { uniform = [0.2, 0.8] }
"""

#: What ``search`` tries for an ensemble's first stacker when no ``--space`` is given.
DEFAULT_STACKER_SPACE = """\
lr = { loguniform = [1e-4, 1e-2] }
p_dropout = { uniform = [0.0, 0.5] }
base_size = { choice = [32, 64, 128, 256] }
reduction_scale = { choice = [1, 2, 4, 8] }
"""

#: A space file showing every kind of entry; valid for the shipped ``small`` experiment.
EXAMPLE_SPACE = """\
"train.lr" = { loguniform = [1e-4, 1e-2] }
"model.params.dropout" = { uniform = [0.1, 0.5] }
"model.params.base_size" = { int = [4, 16] }      # both ends included
"mixers.prob" = { choice = [0.0, 0.5, 0.8] }
"train.max_epochs" = 20                            # a plain value is fixed in every trial
"""

_ENTRY = re.compile(r'"?(?P<key>[\w.]+)"? = \{ (?P<kind>\w+) = (?P<values>\[.*\]) \}')


def describe_space(text: str) -> list[str]:
    """One line per entry of a space written one entry a line, as ``key kind [values]``.

    Parameters
    ----------
    text : str
        TOML text whose every line is ``key = { kind = [values] }``, as the default spaces are.

    Returns
    -------
    list of str
        E.g. ``["train.lr loguniform [1e-4, 1e-2]", ...]``, in the text's order.

    Raises
    ------
    ValueError
        A line of another shape (the help would otherwise leave it out without a word).
    """
    lines = []
    for line in text.splitlines():
        entry = _ENTRY.fullmatch(line.strip())
        if entry is None:
            raise ValueError(f"not a one-line search space entry: {line!r}")
        lines.append(f"{entry['key']} {entry['kind']} {entry['values']}")
    return lines
