"""Which files in a folder are audio."""

from __future__ import annotations

from pathlib import Path

from freesound.errors import FreesoundError

#: File endings ``find_audio_files`` collects (any libsndfile format works when named directly).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".opus")


def find_audio_files(directory) -> list:
    """Every audio file below ``directory`` (recursively, by extension), sorted by path."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FreesoundError(f"audio folder {directory} does not exist")
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
