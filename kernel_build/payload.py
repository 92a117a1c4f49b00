"""The embedded package: every ``.py`` of ``freesound`` as one deterministic text payload.

Format: a JSON object ``{"freesound/<relative path>": source text}`` with sorted keys, gzip-
compressed with a fixed mtime (0) and level, base64-encoded and wrapped at 76 columns. Nothing in
it depends on the clock, the file system's order or the build machine's paths, so the same
sources always give the same bytes. The kernel template holds the (few-line) decoder.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path


def package_sources(package_dir) -> dict:
    """Every ``.py`` below ``package_dir`` (``__pycache__`` excluded), keyed by POSIX path
    relative to the package's parent (``freesound/models/fcnet.py``), in sorted order.
    """
    package_dir = Path(package_dir)
    files = sorted(
        path for path in package_dir.rglob("*.py")
        if "__pycache__" not in path.relative_to(package_dir).parts
    )
    return {path.relative_to(package_dir.parent).as_posix(): path.read_text(encoding="utf-8") for path in files}


def encode_sources(sources: dict) -> str:
    """The payload text: base64 of gzip (mtime 0, level 9) of the sorted-key JSON of ``sources``.

    ``base64.b64decode`` skips the line breaks, so the text can sit in a triple-quoted string.
    """
    blob = json.dumps(sources, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return base64.encodebytes(gzip.compress(blob, compresslevel=9, mtime=0)).decode("ascii")
