"""``build-kernel --estimate``: how long a kernel will take on the competition's test set, before
uploading it.

The kernel's time is the front end (decoding and log-mels of every clip), the network inputs
(each experiment's tiles with their deltas) and the models (every tile through every fold model
of every experiment; the stackers cost next to nothing). All are measured here, briefly, on this
machine: the models on random tiles in the kernel's batches with the runtime the kernel would
use, the inputs on a random log-mel, the front end on a synthetic clip of the test set's mean
length in its format (wav, or Ogg Vorbis for ``--target cpu4``). Per-window bookkeeping and the
decoding workers' transfers are left out, so the estimate is low (benchmarks/RESULTS.md).
For another device a rate in tiles per second (``make gpu-check`` or
``benchmarks/bench_inference.py`` there) replaces the measured model rate, and the front end is
assumed hidden behind the models by the kernel's decoding workers (true on a GPU, where the CPU
cores are free for decoding). On a CPU they share the cores, so the three add up.

The test set is a clip count and hours of audio (by default the competition's, ``KAGGLE_TEST``),
every clip taken at the mean length, or a folder of audio files whose own lengths are read.

A kernel built with windows (``build-kernel --windows``) predicts each window of a clip as a clip
of its own: the estimate then counts the windows' tiles (``window_widths``). A target
(``--target cpu4``: BirdCLEF's 90 minutes on 4 CPU cores) sets the test set (600 one-minute
soundscapes) and the budget, and the time measured here is scaled to its cores
(``freesound.kaggle.budget.scale_to_cores``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from freesound.audio import read_as_melspectrogram, write_audio
from freesound.errors import FreesoundError
from freesound.kaggle.budget import TARGETS, budget_seconds, choose_plan, plan_ladder, plan_units, scale_to_cores
from freesound.predict import Tagger, WindowSpec, window_widths
from freesound.predict.runtimes import resolve_runtime

#: FSDKaggle2019's test set as Kaggle ran the kernels (DESIGN.md): clips and hours of audio.
KAGGLE_TEST = {"clips": 4481, "hours": 12.9}
#: Batches timed per experiment after one warm-up batch.
TIMED_BATCHES = 2


def test_widths(clips: int, hours: float, hop_length: int = 690, sample_rate: int = 44100) -> np.ndarray:
    """Log-mel widths (frames) of ``clips`` clips of the mean length ``hours * 3600 / clips`` s:
    ``1 + samples // hop_length`` (centred frames; silence trimming ignored, so an upper bound)."""
    if clips < 1 or not hours > 0:
        raise FreesoundError(f"a test set needs at least one clip and some audio, got {clips} clips, {hours} h")
    samples = int(hours * 3600 / clips * sample_rate)
    return np.full(clips, 1 + samples // hop_length, dtype=np.int64)


def folder_widths(folder, hop_length: int = 690, sample_rate: int = 44100) -> np.ndarray:
    """Log-mel widths of every audio file in ``folder`` (from each file's length, at 44.1 kHz).

    Raises
    ------
    FreesoundError
        The folder holds no file that soundfile reads.
    """
    widths = []
    for path in sorted(Path(folder).iterdir()):
        try:
            info = sf.info(str(path))
        except (RuntimeError, sf.LibsndfileError):
            continue  # not audio to libsndfile: the kernel predicts it from silence, at no cost
        widths.append(1 + int(info.frames * sample_rate / info.samplerate) // hop_length)
    if not widths:
        raise FreesoundError(f"{folder} holds no audio file to estimate from")
    return np.asarray(widths, dtype=np.int64)


def seconds_per_tile(tagger: Tagger, batches: int = TIMED_BATCHES) -> float:
    """Seconds one tile takes through one of ``tagger``'s models: its first model on random tiles,
    after one warm-up batch (export, oneDNN set-up)."""
    single = tagger.subset(1)
    rng = np.random.default_rng(0)
    tiles = rng.uniform(-0.5, 0.5, (tagger.batch_size, tagger.input_config.channels, tagger.audio_config.n_mels,
                                    tagger.input_config.tile_frames)
                        ).astype(np.float32)
    single._forward(tiles)
    start = time.perf_counter()
    for _ in range(batches):
        single._forward(tiles)
    return (time.perf_counter() - start) / (batches * len(tiles))


def input_seconds_per_tile(tagger: Tagger, rounds: int = TIMED_BATCHES) -> float:
    """Seconds building one tile's network input takes (its deltas, ``Tagger._inputs``), once per
    experiment whatever its folds: on a random log-mel of one tile, the median of ``rounds`` runs
    of ``batch_size`` tiles. A window of one tile costs about as much here as one model's pass."""
    rng = np.random.default_rng(0)
    logmel = rng.uniform(-80.0, 0.0, (tagger.audio_config.n_mels, tagger.input_config.tile_frames)).astype(np.float32)
    times = []
    for _ in range(rounds + 1):
        start = time.perf_counter()
        for _ in range(tagger.batch_size):
            tagger._inputs(logmel)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:])) / tagger.batch_size


#: How ``frontend_seconds_per_frame`` writes its clip: soundfile's format and subtype, and the
#: sample rate (None: the experiment's). BirdCLEF ships 32 kHz Ogg Vorbis, so the front end's
#: resampling to another rate is timed too.
AUDIO_FORMATS = {"wav": ("WAV", "PCM_16", None), "ogg": ("OGG", "VORBIS", 32000)}


def frontend_seconds_per_frame(config, seconds: float, rounds: int = 3, audio_format: str = "wav") -> float:
    """Seconds of decoding and log-mel per log-mel frame, on a noise clip of ``seconds`` written as
    ``audio_format`` (``AUDIO_FORMATS``: 16-bit wav at the config's rate, FSDKaggle2019's format,
    or 32 kHz Ogg Vorbis, BirdCLEF's, slower to decode); the median of ``rounds``."""
    file_format, subtype, rate = AUDIO_FORMATS[audio_format]
    rate = rate or config.sample_rate
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(max(1, int(seconds * rate)))).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"clip.{audio_format}"
        write_audio(path, clip, rate, file_format, subtype)
        times = []
        for _ in range(rounds + 1):
            start = time.perf_counter()
            frames = read_as_melspectrogram(path, config).shape[1]
            times.append(time.perf_counter() - start)
    return float(np.median(times[1:])) / frames


def estimate_kernel(taggers: dict, widths, *, stackers: bool = False, tiles_per_second: float | None = None,
                    time_limit=None, device_type: str = "cpu", file_widths=None, audio_format: str = "wav") -> dict:
    """The expected kernel time on clips of ``widths`` frames.

    Parameters
    ----------
    taggers : dict experiment -> Tagger (all its folds), as the kernel loads them
    widths : the test clips' log-mel widths (``test_widths`` or ``folder_widths``)
    stackers : whether the ensemble has stackers (for the plan ladder)
    tiles_per_second : a target device's rate for one model; default measured here
    time_limit, device_type : the budget, as the kernel reads it (``budget_seconds``)
    file_widths : the test files' widths when ``widths`` are their windows' (the front end decodes
        whole files); default ``widths``
    audio_format : the test files' format, for the front end (``frontend_seconds_per_frame``)

    Returns
    -------
    dict with ``clips``, ``audio_hours``, ``tiles`` (per experiment, all folds; a whole-clip
    experiment's passes counted in tiles of its length, ``budget.mean_tiles``), ``whole_clip``
    (those experiments' names), ``seconds_per_tile`` (per experiment, one model),
    ``model_seconds``, ``input_seconds`` (building the tiles' network inputs),
    ``frontend_seconds``, ``audio_format``, ``total_seconds``, ``budget``, ``runtime`` and
    ``plan`` (the first plan of the kernel's ladder that fits the budget)
    """
    widths = np.asarray(widths, dtype=np.int64)
    first = next(iter(taggers.values()))
    config = first.audio_config
    step = first.tile_step
    folds = {name: len(tagger.models) for name, tagger in taggers.items()}
    rates = {name: (1.0 / tiles_per_second if tiles_per_second else seconds_per_tile(tagger))
             for name, tagger in taggers.items()}
    ladder = plan_ladder(folds, stackers, tile_step=step)
    inputs = {name: tagger.input_config for name, tagger in taggers.items()}
    units = plan_units(ladder[0], widths, inputs)
    model_seconds = len(widths) * sum(units[name] * rates[name] for name in units)
    # The network inputs are built once per experiment's tile, in the kernel's own process.
    input_seconds = len(widths) * sum(units[name] / folds[name] * input_seconds_per_tile(tagger)
                                      for name, tagger in taggers.items())
    files = widths if file_widths is None else np.asarray(file_widths, dtype=np.int64)
    frontend = frontend_seconds_per_frame(config, float(np.mean(files)) * config.hop_length / config.sample_rate,
                                          audio_format=audio_format)
    frontend_seconds = frontend * float(files.sum())
    # A GPU run hides decoding behind the models (the kernel's workers); on a CPU they share cores.
    if tiles_per_second:
        total = max(model_seconds + input_seconds, frontend_seconds)
        per_clip = (max(0.0, frontend_seconds - model_seconds - input_seconds) + input_seconds) / len(widths)
    else:
        total = model_seconds + input_seconds + frontend_seconds
        per_clip = (frontend_seconds + input_seconds) / len(widths)
    budget = budget_seconds(time_limit, device_type)
    index, projected = choose_plan(ladder, 0, budget, widths, len(widths), rates, per_clip, inputs=inputs)
    return {
        "clips": len(widths), "audio_hours": float(widths.sum()) * config.hop_length / config.sample_rate / 3600,
        "tiles": {name: int(round(units[name] * len(widths))) for name in units},
        "whole_clip": [name for name, config in inputs.items() if config.whole_clip],
        "seconds_per_tile": rates, "model_seconds": model_seconds, "input_seconds": input_seconds,
        "frontend_seconds": frontend_seconds, "audio_format": audio_format,
        "total_seconds": total, "budget": budget, "runtime": first.runtime,
        "plan": ladder[index].describe(ladder[0]) if index else "the full ensemble",
        "plan_seconds": projected,
    }


def format_estimate(name: str, estimate: dict, tiles_per_second: float | None) -> list:
    """The estimate as log lines."""
    where = (f"a device running {tiles_per_second:g} tiles/s per model" if tiles_per_second
             else f"this machine ({estimate['runtime']}, {torch.get_num_threads()} threads)")
    clips = (f"{estimate['files']} files, {estimate['clips']} windows" if estimate.get("files", estimate["clips"])
             != estimate["clips"] else f"{estimate['clips']} clips")
    lines = [f"estimate for {name} on {clips} ({estimate['audio_hours']:.2f} h of audio), {where}:"]
    for experiment, tiles in estimate["tiles"].items():
        rate = 1.0 / estimate["seconds_per_tile"][experiment]
        what = ("tiles' worth of frames in whole-clip passes" if experiment in estimate.get("whole_clip", ())
                else "tiles")
        lines.append(f"  {experiment}: {tiles} {what} through its folds, {rate:.1f} tiles/s per model, "
                     f"{tiles / rate:.0f} s")
    lines.append(f"  network inputs (the tiles' deltas): {estimate['input_seconds']:.0f} s")
    lines.append(f"  front end ({estimate['audio_format']} files decoded, log-mels): {estimate['frontend_seconds']:.0f} s"
                 + (" (hidden behind the models by the decoding workers)" if tiles_per_second else ""))
    verdict = ("fits" if estimate["total_seconds"] <= estimate["budget"]
               else f"does not fit; the kernel would switch to: {estimate['plan']} "
                    f"(about {estimate['plan_seconds']:.0f} s)")
    lines.append(f"  expected kernel time: {estimate['total_seconds']:.0f} s ({estimate['total_seconds'] / 3600:.2f} h); "
                 f"budget {estimate['budget']:.0f} s: {verdict}")
    return lines


def estimate_spec(spec: dict, weights_root, *, clips: int | None = None, hours: float | None = None,
                  audio_dir=None, tiles_per_second: float | None = None, time_limit=None, device="cpu",
                  runtime: str = "auto", batch_size: int = 64, windows: dict | None = None,
                  audio_format: str = "wav") -> dict:
    """``estimate_kernel`` for an experiment or ensemble spec whose weights are under
    ``weights_root``, on ``audio_dir``'s files or ``clips`` clips of ``hours`` (default the
    competition's test set) in ``audio_format`` (Ogg Vorbis when most of ``audio_dir``'s files are
    .ogg); with ``windows`` (the manifest's entry), on their windows. The result's ``files`` is the
    number of files."""
    weights_root = Path(weights_root)
    taggers = {name: Tagger.from_checkpoints([weights_root / path for path in paths], device=device,
                                             batch_size=batch_size, runtime=resolve_runtime(runtime, device))
               for name, paths in spec["experiments"].items()}
    config = next(iter(taggers.values())).audio_config
    if audio_dir is not None:
        widths = folder_widths(audio_dir, config.hop_length, config.sample_rate)
        suffixes = [path.suffix.lower() for path in Path(audio_dir).iterdir()]
        if suffixes.count(".ogg") > len(suffixes) / 2:  # the front end is timed in the folder's format
            audio_format = "ogg"
    else:
        widths = test_widths(clips or KAGGLE_TEST["clips"], hours or KAGGLE_TEST["hours"], config.hop_length,
                             config.sample_rate)
    files = widths
    if windows is not None:
        widths = window_widths(files, WindowSpec(windows["seconds"], windows["hop"]), config)
    device_type = "cuda" if tiles_per_second else torch.device(device).type
    estimate = estimate_kernel(taggers, widths, stackers=bool(spec.get("stackers")),
                               tiles_per_second=tiles_per_second, time_limit=time_limit, device_type=device_type,
                               file_widths=files, audio_format=audio_format)
    estimate["files"] = len(files)
    return estimate


def estimate_kernels(work, *, experiment=None, ensemble=None, experiments_dir="experiments", clips=None, hours=None,
                     audio_dir=None, tiles_per_second=None, time_limit=None, runtime="auto",
                     allow_unfinished: bool = False, windows: dict | None = None, target: str | None = None,
                     log=print) -> dict:
    """``build-kernel --estimate``: log the estimate of each kernel that ``build_kernels`` would
    write (nothing is written). Returns kernel kind -> ``estimate_kernel``'s dict.

    ``windows`` (the manifest's entry) counts the windows' tiles; ``target`` (a key of
    ``freesound.kaggle.budget.TARGETS``) sets the default test set and budget, and adds
    ``target_seconds``, the total scaled from this machine's threads to the target's cores.

    Raises
    ------
    FreesoundError
        Neither kernel asked for, a weight file missing, or a fold that has not finished training
        (unless ``allow_unfinished``).
    """
    from freesound.paths import weights_root
    from kernel_build.bundle import resolve_spec
    from kernel_build.manifest import missing_weights

    specs = {kind: resolve_spec(kind, value, work, experiments_dir, allow_unfinished)
             for kind, value in (("experiment", experiment), ("ensemble", ensemble)) if value}
    if not specs:
        raise FreesoundError("nothing to estimate: name an experiment, an ensemble or both")
    root = weights_root(work)
    estimates = {}
    for kind, spec in specs.items():
        missing = missing_weights(spec, root)
        if missing:
            raise FreesoundError(f"cannot estimate {spec['name']}: weight files missing under {root} "
                                 f"({', '.join(missing)})")
        profile = TARGETS[target] if target else {}
        estimates[kind] = estimate_spec(spec, root, clips=clips or profile.get("clips"),
                                        hours=hours or profile.get("hours"), audio_dir=audio_dir,
                                        tiles_per_second=tiles_per_second,
                                        time_limit=time_limit or profile.get("budget_seconds"), runtime=runtime,
                                        windows=windows, audio_format=profile.get("audio_format", "wav"))
        for line in format_estimate(spec["name"], estimates[kind], tiles_per_second):
            log(line)
        if target:
            estimate = estimates[kind]
            threads = torch.get_num_threads()
            estimate["target_seconds"] = scale_to_cores(estimate["total_seconds"], threads, profile["cores"])
            verdict = "fits" if estimate["target_seconds"] <= estimate["budget"] else "does not fit"
            log(f"  on {target} ({profile['cores']} cores, Kaggle's limit {profile['limit_seconds']:.0f} s): about "
                f"{estimate['target_seconds']:.0f} s, scaled from {threads} thread(s) here as if the work divided "
                f"evenly; budget {estimate['budget']:.0f} s: {verdict}")
    return estimates
