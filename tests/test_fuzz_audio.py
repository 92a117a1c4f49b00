"""Fuzzing the front end: whatever bytes a file holds, ``read_as_melspectrogram`` returns a valid
log-mel or raises ``AudioDecodeError`` naming the file; it never raises anything else, crashes
the interpreter or hangs.

The files are decoded in a child process, so a crash in a C decoder (libsndfile, libmpg123,
libvorbis) or a hang fails the test with the file that caused it instead of taking pytest down.
"""

import io
import json
import subprocess
import sys

import numpy as np
import soundfile as sf

CASES_SEED = 2019
#: Seconds the child may take for all cases (it needs ~10 s, most of it importing librosa).
TIMEOUT = 240
#: Seconds any one file may take.
PER_FILE = 20

CHILD = r'''
import json, sys, time
from pathlib import Path

import numpy as np

from freesound.audio import AudioDecodeError, read_as_melspectrogram

for line in Path(sys.argv[1]).read_text().splitlines():
    print(json.dumps({"started": line}), flush=True)
    started = time.perf_counter()
    result = {"path": line}
    try:
        logmel = read_as_melspectrogram(line)
        result.update(outcome="decoded", shape=list(logmel.shape), dtype=str(logmel.dtype),
                      finite=bool(np.isfinite(logmel).all()))
    except AudioDecodeError as error:
        result.update(outcome="AudioDecodeError", message=str(error), reason=error.reason)
    except BaseException as error:  # what the test is looking for
        result.update(outcome=type(error).__name__, message=str(error))
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result), flush=True)
'''


def encoded(fmt, subtype, seconds=1.0, sr=44100):
    t = np.arange(int(seconds * sr)) / sr
    clip = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, clip, sr, format=fmt, subtype=subtype)
    return buffer.getvalue()


def fuzz_cases(folder):
    """About 100 seeded files: {path: may_decode}. Random bytes (bare or behind a real format's
    magic number) must fail; real files cut short or with flipped header bytes, and a real
    header over random samples, may still be valid audio."""
    rng = np.random.default_rng(CASES_SEED)
    real = {".wav": encoded("WAV", "PCM_16"), ".flac": encoded("FLAC", "PCM_16"),
            ".ogg": encoded("OGG", "VORBIS"), ".aiff": encoded("AIFF", "PCM_16")}
    extensions = [".wav", ".flac", ".ogg", ".mp3", ".aiff", ".au", ".snd", ".opus", ".gsm", ""]

    def random_bytes(low=1, high=4096):
        return rng.bytes(int(rng.integers(low, high)))

    def riff(body):
        return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WAVE" + body

    def aiff(body):
        return b"FORM" + (len(body) + 4).to_bytes(4, "big") + b"AIFF" + body

    cases = []
    for _ in range(30):
        cases.append((extensions[int(rng.integers(len(extensions)))], random_bytes(), False))
    for _ in range(5):
        cases += [(".wav", riff(random_bytes()), False), (".wav", riff(b"fmt " + random_bytes()), False),
                  (".flac", b"fLaC" + random_bytes(), False), (".ogg", b"OggS" + random_bytes(), False),
                  (".aiff", aiff(random_bytes()), False)]
    for _ in range(20):
        extension = list(real)[int(rng.integers(len(real)))]
        data = real[extension]
        cases.append((extension, data[:int(rng.integers(1, len(data)))], True))
    for _ in range(15):
        extension = list(real)[int(rng.integers(len(real)))]
        data = bytearray(real[extension])
        for position in rng.integers(0, 64, size=int(rng.integers(1, 6))):
            data[position] = int(rng.integers(256))
        cases.append((extension, bytes(data), True))
    for _ in range(5):
        cases.append((".wav", real[".wav"][:44] + random_bytes(2, 20000), True))

    folder.mkdir()
    paths = {}
    for index, (extension, data, may_decode) in enumerate(cases):
        path = folder / f"case{index:03d}{extension}"
        path.write_bytes(data)
        paths[path] = may_decode
    specials = {"empty.wav": b"", "notes.wav": b"this is not audio\n" * 40, "nul.flac": b"\x00" * 3000}
    for name, data in specials.items():
        (folder / name).write_bytes(data)
        paths[folder / name] = False
    (folder / "a_folder.wav").mkdir()
    paths[folder / "a_folder.wav"] = False
    paths[folder / "missing.ogg"] = False
    return paths


def test_any_bytes_decode_or_raise_audio_decode_error(tmp_path):
    cases = fuzz_cases(tmp_path / "cases")
    listing = tmp_path / "cases.txt"
    listing.write_text("\n".join(str(path) for path in cases))
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    try:
        run = subprocess.run([sys.executable, str(child), str(listing)], cwd=tmp_path, capture_output=True,
                             text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        # What the child printed before it was killed arrives as bytes, even with text=True.
        lines = (expired.stdout or b"").decode().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        raise AssertionError(f"the front end hung (on {last.get('started', 'the first file')})") from None
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    results = [line for line in lines if "outcome" in line]
    if run.returncode != 0 or len(results) != len(cases):
        started = [line["started"] for line in lines if "started" in line]
        raise AssertionError(f"the child died (status {run.returncode}) on {started[-1] if started else '?'}:\n"
                             f"{run.stderr[-2000:]}")

    decoded = 0
    for result in results:
        path, outcome = result["path"], result["outcome"]
        may_decode = cases[next(p for p in cases if str(p) == path)]
        assert result["seconds"] < PER_FILE, (path, result["seconds"])
        if outcome == "decoded":
            assert may_decode, f"{path} is not audio but decoded"
            assert result["dtype"] == "float32" and result["shape"][0] == 128 and result["shape"][1] >= 1
            assert result["finite"], path
            decoded += 1
        else:
            assert outcome == "AudioDecodeError", (path, outcome, result["message"])
            assert path in result["message"] and result["reason"].strip(), result
    # Both outcomes were exercised: the cut and damaged real files do not all fail.
    assert 0 < decoded < len(results)
