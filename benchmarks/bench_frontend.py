"""Front-end benchmark: ``freesound.audio.read_as_melspectrogram`` against a per-file librosa
pipeline with the same parameters, one thread each, plus feature-cache throughput.

    .venv/bin/python benchmarks/bench_frontend.py [--quick]

Prints Markdown tables (reference and ours side by side, the ratio and the max |diff|) and exits
with status 1 when any clip's log-mel differs from the reference by more than 1e-3 dB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import limit_threads  # noqa: E402  (must run before numpy is imported)

limit_threads(1)

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402

from common import edge_clips, header, interleaved, median, table, write_clips  # noqa: E402
from freesound import audio  # noqa: E402
from freesound.audio import logmel, read_as_melspectrogram  # noqa: E402

TOLERANCE_DB = 1e-3
SR = 44100
MIN_SAMPLES = 22050


# --------------------------------------------------------------------------------------------
# The reference: the front end written out as plain per-file librosa calls


def reference_load(path):
    y, _ = librosa.load(str(path), sr=SR, mono=True)
    return y


def reference_trim(y):
    trimmed, (start, end) = librosa.effects.trim(y, top_db=60)
    if len(trimmed) < MIN_SAMPLES:
        if len(y) >= MIN_SAMPLES:
            left = min(max(0, (start + end) // 2 - MIN_SAMPLES // 2), len(y) - MIN_SAMPLES)
            trimmed = y[left:left + MIN_SAMPLES]
        else:
            pad = MIN_SAMPLES - len(y)
            trimmed = np.pad(y, (pad // 2, pad - pad // 2))
    return trimmed


def reference_log_mel(y):
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=2560, hop_length=690, n_mels=128, fmin=20, fmax=22050,
        center=True, pad_mode="reflect", htk=False, norm="slaney", power=2.0,
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80)


def reference(path):
    return reference_log_mel(reference_trim(reference_load(path)))


def float32_fft_variant(path):
    """What a float32 FFT would give (NOT what freesound does): the same pipeline as
    ``read_as_melspectrogram`` with the FFT in float32. Measured only to show why it is not used:
    librosa runs its FFT in float64, and a float32 FFT misses the reference by more than the
    1e-3 dB tolerance on steep spectra."""
    config = audio.DEFAULT_AUDIO_CONFIG
    y = audio.read_audio(path, config)
    plan = logmel._mel_plan(config.sample_rate, config.n_fft, config.n_mels, config.fmin, config.fmax)
    frames = logmel._centered_frames(y, config.n_fft, config.hop_length, config.pad_mode)
    spectrum = scipy.fft.rfft(frames * plan.window.astype(np.float32), axis=-1, overwrite_x=True)
    power = np.square(spectrum.real) + np.square(spectrum.imag)
    return audio.power_to_db(logmel._apply_mel(power, plan), config)


# --------------------------------------------------------------------------------------------


def check_agreement(paths) -> tuple[float, float, list]:
    """Max |ours - reference| in dB over ``paths`` (and the float32-FFT variant's); table rows."""
    worst, worst32, rows = 0.0, 0.0, []
    for path in paths:
        ours, ref = read_as_melspectrogram(path), reference(path)
        if ours.shape != ref.shape or ours.dtype != np.float32:
            raise SystemExit(f"{path.name}: shape/dtype {ours.shape} {ours.dtype} vs reference {ref.shape}")
        diff = float(np.abs(ours - ref).max())
        diff32 = float(np.abs(float32_fft_variant(path) - ref).max())
        worst, worst32 = max(worst, diff), max(worst32, diff32)
        rows.append((path.name, ours.shape[1], f"{diff:.2e}", f"{diff32:.2e}"))
    return worst, worst32, rows


def time_files(paths, rounds: int) -> list:
    """Per clip: (seconds of audio, reference median s, ours median s), interleaved per clip."""
    results = []
    for path in paths:
        times = interleaved({"reference": lambda p=path: reference(p),
                             "ours": lambda p=path: read_as_melspectrogram(p)}, rounds)
        seconds = librosa.get_duration(path=str(path))
        results.append((seconds, median(times["reference"]), median(times["ours"])))
    return results


def stage_times(path, rounds: int) -> list:
    """Decode, trim and log-mel separately on one clip (rows for the table)."""
    y = reference_load(path)
    trimmed = reference_trim(y)
    config = audio.DEFAULT_AUDIO_CONFIG
    stages = [
        ("decode (librosa.load vs decode+mono)", lambda: reference_load(path),
         lambda: audio.to_mono(audio.decode(path)[0])),
        ("trim + 0.5 s rule", lambda: reference_trim(y), lambda: audio.trim_to_min_length(y, config)),
        ("log-mel (melspectrogram+power_to_db vs to_log_mel)", lambda: reference_log_mel(trimmed),
         lambda: audio.to_log_mel(trimmed, config)),
    ]
    rows = []
    for name, ref_fn, ours_fn in stages:
        times = interleaved({"reference": ref_fn, "ours": ours_fn}, rounds)
        ref_t, ours_t = median(times["reference"]), median(times["ours"])
        rows.append((name, f"{ref_t * 1e3:.2f}", f"{ours_t * 1e3:.2f}", f"{ref_t / ours_t:.2f}x"))
    return rows


def cache_throughput(tmp: Path, num_clips: int, rounds: int) -> list:
    """Audio-seconds per second of ``cache_features`` with 1 and 2 workers on a synthetic dataset,
    and of the reference pipeline in one process (computing, not saving)."""
    from freesound.data.dataset import load_dataset
    from freesound.data.features import cache_features
    from freesound.data.synth import synthesize_dataset

    curated = max(2, num_clips // 2)
    noisy = max(1, num_clips // 4)
    test = max(1, num_clips - curated - noisy)
    summary = synthesize_dataset(tmp / "synth", num_classes=8, num_curated=curated, num_noisy=noisy,
                                 num_test=test, seed=3, progress=False)
    dataset = load_dataset(summary.root)
    paths = [p for split in ("train_curated", "train_noisy", "test") for p in dataset.paths(split)]
    seconds = summary.seconds

    def run_cache(workers: int, index: list):
        index[0] += 1
        report = cache_features(dataset, tmp / f"work_{workers}_{index[0]}", workers=workers, progress=False)
        assert report.computed == len(paths) and not report.failures, report

    counters = {1: [0], 2: [0]}
    times = interleaved({
        "reference, 1 process": lambda: [reference(p) for p in paths],
        "cache_features, workers=1": lambda: run_cache(1, counters[1]),
        "cache_features, workers=2": lambda: run_cache(2, counters[2]),
    }, rounds, warmup=0)
    rows = []
    for name, values in times.items():
        wall = median(values)
        rows.append((name, len(paths), f"{seconds:.1f}", f"{wall:.2f}", f"{seconds / wall:.0f}"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (fewer clips and rounds)")
    parser.add_argument("--rounds", type=int, help="timing rounds per clip (default 7, quick 3)")
    parser.add_argument("--clips", type=int, help="benchmark clips, 1-12 s (default 24, quick 8)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 7)
    n_clips = args.clips or (8 if args.quick else 24)

    print(header("Front end: read_as_melspectrogram vs a per-file librosa pipeline (1 thread each)"))
    with tempfile.TemporaryDirectory(prefix="bench_frontend_") as tmp:
        tmp = Path(tmp)
        durations = np.round(np.linspace(1.0, 12.0, n_clips), 2)
        clips = write_clips(tmp / "clips", durations, seed=11)
        edges = edge_clips(tmp / "edge", seed=5)

        worst_clips, worst32_clips, _ = check_agreement(clips)
        worst_edges, _, edge_rows = check_agreement(edges)
        worst = max(worst_clips, worst_edges)
        print(f"\n## Agreement with the reference (tolerance {TOLERANCE_DB:g} dB)\n")
        print(f"{len(clips)} benchmark clips of 1-12 s: max |diff| {worst_clips:.2e} dB "
              f"(a float32 FFT, not used: {worst32_clips:.2e} dB)\n")
        print(table(["edge case", "frames", "max |diff| dB", "float32-FFT variant (not used)"], edge_rows))

        results = time_files(clips, rounds)
        times32 = interleaved({"ours": lambda: [read_as_melspectrogram(p) for p in clips],
                               "float32": lambda: [float32_fft_variant(p) for p in clips]}, rounds)
        buckets = [("1-4 s", 1.0, 4.0), ("4-8 s", 4.0, 8.0), ("8-12 s", 8.0, 12.01), ("all 1-12 s", 0.0, 99.0)]
        rows = []
        for name, low, high in buckets:
            chosen = [r for r in results if low <= r[0] < high]
            if not chosen:
                continue
            audio_s = sum(r[0] for r in chosen)
            ref_t = sum(r[1] for r in chosen)
            ours_t = sum(r[2] for r in chosen)
            rows.append((name, len(chosen), f"{audio_s:.1f}", f"{ref_t * 1e3 / len(chosen):.2f}",
                         f"{ours_t * 1e3 / len(chosen):.2f}", f"{audio_s / ref_t:.0f}", f"{audio_s / ours_t:.0f}",
                         f"{ref_t / ours_t:.2f}x"))
        print(f"\n## File -> log-mel, per clip (median of {rounds} interleaved rounds per clip)\n")
        print(table(["clips", "n", "audio s", "reference ms/clip", "ours ms/clip", "reference audio-s/s",
                     "ours audio-s/s", "speed-up"], rows))
        print(f"\nA float32 FFT (rejected, see agreement) would take {median(times32['float32']) / median(times32['ours']):.2f}"
              f" of ours' time on the same clips, i.e. about "
              f"{sum(r[1] for r in results) / (sum(r[2] for r in results) * median(times32['float32']) / median(times32['ours'])):.2f}x"
              " the reference's speed.")

        middle = clips[len(clips) // 2]
        print(f"\n## Stages on one {librosa.get_duration(path=str(middle)):.1f} s clip (ms, median of "
              f"{max(rounds, 5) * 2} rounds)\n")
        print(table(["stage", "reference ms", "ours ms", "speed-up"], stage_times(middle, max(rounds, 5) * 2)))

        n_cache = 12 if args.quick else 40
        cache_rounds = 1 if args.quick else 3
        print(f"\n## Feature cache throughput (synthetic dataset, median of {cache_rounds} round(s); "
              "audio-seconds per wall second)\n")
        print(table(["pipeline", "clips", "audio s", "wall s", "audio-s/s"],
                    cache_throughput(tmp, n_cache, cache_rounds)))

    print(f"\nmax |diff| over all clips: {worst:.2e} dB (tolerance {TOLERANCE_DB:g})")
    if not worst <= TOLERANCE_DB:
        print("FAIL: the front end disagrees with the reference", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
