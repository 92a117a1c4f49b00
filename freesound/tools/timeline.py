"""``freesound tag FILE --timeline``: a long recording tagged window by window.

Each file is predicted per window (``freesound.predict.windows``: untrimmed audio, windows of
``seconds`` every ``hop``); its rows (``row_id`` = ``<file stem>_<end second>``, then one column per
class) go to ``<out>/<stem>_timeline.csv`` and a heat map of the top classes over time, under the
waveform, to ``<out>/<stem>_timeline.png`` (``freesound.tools.plots.plot_timeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from freesound.audio import decode, to_mono
from freesound.fileio import atomic_write_csv
from freesound.predict import Tagger, WindowSpec, window_row_ids
from freesound.predict.files import read_untrimmed_logmel
from freesound.tools.plots import plot_timeline


@dataclass(frozen=True)
class Timeline:
    """One file's windows: ``probabilities`` (DataFrame indexed by row_id, one column per class),
    each window's ``starts`` in seconds, and the CSV and PNG written."""

    probabilities: pd.DataFrame
    starts: list
    csv: Path
    png: Path


def tag_timeline(tagger: Tagger, path, windows: WindowSpec, out_dir, top: int = 10) -> Timeline:
    """Predict ``path`` window by window and write its CSV and PNG under ``out_dir``.

    Raises
    ------
    AudioDecodeError
        The file cannot be used.
    """
    path = Path(path)
    logmel = read_untrimmed_logmel(path, tagger.audio_config)
    probabilities, bounds = tagger.predict_windows([logmel], windows)
    frame = pd.DataFrame(probabilities[0], index=pd.Index(window_row_ids(path.name, bounds[0]), name="row_id"),
                         columns=tagger.classes)
    starts = [end - windows.seconds for _, _, end in bounds[0]]
    out_dir = Path(out_dir)
    csv = out_dir / f"{path.stem}_timeline.csv"
    atomic_write_csv(csv, frame.reset_index(), index=False)
    samples, sample_rate = decode(path, tagger.audio_config.max_seconds)
    png = plot_timeline(to_mono(samples), sample_rate, frame, starts, windows.seconds,
                        out_dir / f"{path.stem}_timeline.png", title=path.name, top=top)
    return Timeline(frame, starts, csv, png)


def format_timeline(timeline: Timeline, window_seconds: float, top: int) -> list:
    """One line per window: its span in seconds and its ``top`` classes, most probable first."""
    lines = []
    for start, (_, row) in zip(timeline.starts, timeline.probabilities.iterrows()):
        best = row.sort_values(ascending=False).head(top)
        tags = ", ".join(f"{label} {prob:.3f}" for label, prob in best.items())
        lines.append(f"  {start:7.2f}-{start + window_seconds:7.2f} s  {tags}")
    return lines
