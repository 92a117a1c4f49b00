"""Which files in a folder are audio: the one rule every command that walks a folder uses.

A file is audio by its name: an extension in ``AUDIO_EXTENSIONS``, in any case (``.WAV``,
``.M4a``), and neither it nor a folder it is in below the walked one hidden (``.DS_Store``,
``._clip.wav`` AppleDouble metadata, ``.git/``).
``scan_audio_folder`` also returns what the rule left out, so a command can say so; with
``all_files`` it takes every file and lets the decoder decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from freesound.errors import FreesoundError

#: File endings taken as audio. libsndfile reads the first group by content; the second needs
#: librosa's fallback decoder (audioread with ffmpeg or GStreamer), and a file it cannot read is
#: named with the reason rather than left out.
AUDIO_EXTENSIONS = (
    ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd",
    ".caf", ".w64", ".rf64",
    ".m4a", ".m4b", ".mp4", ".aac", ".webm", ".mka", ".wma", ".amr", ".ac3", ".3gp",
)


def is_audio_name(path) -> bool:
    """Whether a file's name says it is audio: a known extension in any case, not hidden."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in AUDIO_EXTENSIONS


@dataclass(frozen=True)
class AudioFolder:
    """The files of a folder, split by ``is_audio_name``.

    Attributes
    ----------
    root : Path, the folder
    files : list of Path, the files to decode, sorted
    left_out : list of Path, the other files, sorted (empty with ``all_files``)
    """

    root: Path
    files: list
    left_out: list

    def describe_left_out(self, shown: int = 10) -> str:
        """``"3 files: notes.txt, cover.jpg, README"`` (paths relative to ``root``, the first ``shown``)."""
        names = [path.relative_to(self.root).as_posix() for path in self.left_out]
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return f"{len(names)} file(s): {', '.join(names[:shown])}{more}"


def scan_audio_folder(directory, *, all_files: bool = False) -> AudioFolder:
    """Every file below ``directory`` (recursively), split into audio by name and the rest.

    Parameters
    ----------
    directory : path
    all_files : take every file (hidden ones included) and let the decoder decide

    Raises
    ------
    FreesoundError
        ``directory`` is not a folder.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FreesoundError(f"audio folder {directory} does not exist")
    every = sorted(path for path in directory.rglob("*") if path.is_file())
    if all_files:
        return AudioFolder(directory, every, [])
    audio = [path for path in every if is_audio_name(path)
             and not any(part.startswith(".") for part in path.relative_to(directory).parts)]
    taken = set(audio)
    return AudioFolder(directory, audio, [path for path in every if path not in taken])


def find_audio_files(directory) -> list:
    """Every audio file below ``directory`` (recursively, by ``is_audio_name``), sorted by path."""
    return scan_audio_folder(directory).files
