"""The ``freesound`` command line: a thin click layer over the library.

Every command calls one library function; anything it prints is a summary of that function's
result. A ``FreesoundError`` becomes one sentence on stderr and exit status 1 (``--debug`` shows
the traceback instead); a ``FreesoundWarning`` becomes one ``warning:`` line on stderr.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from freesound import __version__, settings
from freesound.config import METRIC_NAMES
from freesound.errors import FreesoundError, file_error_sentence, one_line_warnings

WORK_DEFAULT = "data"


class FreesoundGroup(click.Group):
    """Turns the library's user-facing errors into one clear sentence, and its warnings into one line.

    A full disk, a read-only folder or a denied permission (``file_error_sentence``) is one too.
    """

    def invoke(self, ctx):
        try:
            with one_line_warnings(lambda line: click.echo(line, err=True)):
                return super().invoke(ctx)
        except (FreesoundError, OSError) as error:
            sentence = str(error) if isinstance(error, FreesoundError) else file_error_sentence(error)
            if sentence is None:
                raise
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {sentence}", err=True)
            sys.exit(1)


@click.group(cls=FreesoundGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="freesound")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def main(ctx, debug):
    """Multi-label audio tagging the way the Freesound Audio Tagging 2019 winners did it.

    A typical run: synth (or download FSDKaggle2019) -> features -> make-folds -> train ->
    predict -> build-kernel. Artifacts go under --work (default: data/).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def data_option(function):
    return click.option(
        "--data", "data_dir", required=True, type=click.Path(path_type=Path),
        help="Dataset directory in the FSDKaggle2019 layout.",
    )(function)


def work_option(function):
    return click.option(
        "--work", "work_dir", default=WORK_DEFAULT, show_default=True, type=click.Path(path_type=Path),
        help="Where features, folds, weights and predictions go.",
    )(function)


def experiments_dir_option(function):
    return click.option(
        "--experiments", "experiments_dir", default="experiments", show_default=True,
        type=click.Path(path_type=Path),
        help="Folder of experiment TOML files; a name not found there is looked up among the built-in presets "
        "(freesound experiments lists both).",
    )(function)


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--classes", "num_classes", type=click.IntRange(2, 80), default=20, show_default=True,
              help="Number of classes (the first N FSDKaggle2019 class names).")
@click.option("--curated", "num_curated", type=click.IntRange(1), default=400, show_default=True,
              help="Curated (trusted) training clips.")
@click.option("--noisy", "num_noisy", type=click.IntRange(0), default=600, show_default=True,
              help="Noisy training clips (wrong/missing labels, shifted recording condition).")
@click.option("--test", "num_test", type=click.IntRange(1), default=200, show_default=True,
              help="Test clips (labels in test_labels.csv).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, byte-identical dataset.")
@click.option("--like", "like_dir", type=click.Path(path_type=Path), default=None,
              help="Replicate this FSDKaggle2019 metadata folder (train_curated.csv, train_noisy.csv, "
              "test_post_competition.csv, vocabulary.csv), or a BirdCLEF one (train.csv, taxonomy.csv): its names, "
              "labels, counts and order, synthetic audio. --classes/--curated/--noisy/--test do not apply.")
@click.option("--duration-scale", type=click.FloatRange(0, min_open=True), default=None,
              help="With --like: multiply every clip length by this (0.1: about 10 h of audio for the real metadata).  [default: 1]")
@click.option("--soundscapes", is_flag=True,
              help="Write the BirdCLEF layout instead: train.csv, train_audio/ (--curated recordings of 3-60 s, "
              "default 100), taxonomy.csv, test_soundscapes/ (--test one-minute soundscapes, default 10), "
              "sample_submission.csv and solution.csv (5 s windows); --classes defaults to 10.")
@click.pass_context
def synth(ctx, out_dir, num_classes, num_curated, num_noisy, num_test, seed, like_dir, duration_scale, soundscapes):
    """Write a synthetic FSDKaggle2019-shaped dataset to OUT_DIR.

    With --like, a replica of the real metadata (FSDKaggle2019's, or a BirdCLEF train.csv and
    taxonomy.csv); an interrupted --like run resumes where it stopped. With --soundscapes, a
    BirdCLEF-shaped dataset.
    """
    if soundscapes:
        from freesound.data.synth_soundscapes import synthesize_soundscapes

        given = {name: ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT
                 for name in ("num_classes", "num_curated", "num_noisy", "num_test")}
        if like_dir is not None or duration_scale is not None or given["num_noisy"]:
            raise click.UsageError("--soundscapes takes --classes, --curated, --test and --seed only")
        summary = synthesize_soundscapes(
            out_dir, num_classes=num_classes if given["num_classes"] else 10,
            num_recordings=num_curated if given["num_curated"] else 100,
            num_soundscapes=num_test if given["num_test"] else 10, seed=seed, workers=settings.default_workers())
        click.echo(f"wrote {summary}")
        return
    if like_dir is not None:
        from freesound.data.birdclef import TRAIN_CSV, is_birdclef_csv
        from freesound.data.synth_like import synthesize_like
        from freesound.data.synth_soundscapes import synthesize_birdclef_like

        like = synthesize_birdclef_like if is_birdclef_csv(like_dir / TRAIN_CSV) else synthesize_like
        summary = like(out_dir, like_dir, duration_scale=1.0 if duration_scale is None else duration_scale,
                       seed=seed, workers=settings.default_workers())
        click.echo(f"wrote {summary}")
        return
    if duration_scale is not None:
        raise click.UsageError("--duration-scale applies only with --like")
    from freesound.data.synth import synthesize_dataset

    summary = synthesize_dataset(
        out_dir, num_classes=num_classes, num_curated=num_curated, num_noisy=num_noisy,
        num_test=num_test, seed=seed, workers=settings.default_workers(),
    )
    click.echo(f"wrote {summary}")


@main.command()
@data_option
@work_option
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: all available CPUs).")
@click.option("--experiment", default=None,
              help="Use this experiment's [audio] settings (default: the method's front end).")
@experiments_dir_option
@click.option("--max-seconds", type=click.FloatRange(0, min_open=True), default=None,
              help="Crop longer files to their first MAX_SECONDS, with a warning (default: 600, or the "
                   "experiment's); must match the [audio] max_seconds of the experiments trained on them.")
def features(data_dir, work_dir, workers, experiment, experiments_dir, max_seconds):
    """Compute and cache the log-mel spectrogram of every clip (resumable).

    The cache is keyed by the audio settings, so experiments with other [audio] settings each get
    their own: cache them with --experiment.
    """
    import dataclasses

    from freesound.config import AudioConfig, load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.data.features import cache_features, cache_root

    config = load_experiment(experiment, experiments_dir).audio if experiment else AudioConfig()
    if max_seconds is not None and max_seconds < config.min_seconds:
        raise FreesoundError(f"--max-seconds {max_seconds:g} is below the shortest clip the front end makes "
                             f"(min_seconds, {config.min_seconds:g} s); give at least {config.min_seconds:g}")
    if max_seconds is not None:
        config = dataclasses.replace(config, max_seconds=max_seconds)
    dataset = load_dataset(data_dir)
    report = cache_features(dataset, work_dir, config, workers=workers or settings.default_workers())
    click.echo(f"features: {report.computed} computed, {report.cached} already cached, "
               f"{len(report.failures)} failed -> {cache_root(work_dir, dataset.root, config)}")
    for split, fname in report.repaired:
        click.echo(f"  recomputed a damaged cache file: {split}/{fname}", err=True)
    for split, fname, _ in report.truncated:
        click.echo(f"  truncated, cached from the audio that decodes: {split}/{fname}", err=True)
    for split, fname, reason in report.failures:
        click.echo(f"  failed: {split}/{fname}: {reason}", err=True)
    if report.failures:
        sys.exit(1)


@main.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--csv", "csv_file", type=click.Path(path_type=Path), default=None,
              help="Metadata CSV naming each file and its label(s) (a path, or relative to SRC).")
@click.option("--pattern", default=None,
              help="Parse labels and groups from file names, e.g. '{label}_{group}_{index}.wav'.")
@click.option("--file-column", default=None, help="CSV column of file names (default: fname, filename, file, ...).")
@click.option("--audio-dir", default="", help="Folder of the CSV's audio under SRC; may name columns: 'audio/fold{fold}'.")
@click.option("--label-column", default=None, help="Column (or pattern field) of the labels (default: labels, label, category, class).")
@click.option("--separator", default=",", show_default=True, help="Splits a multi-label label field.")
@click.option("--group-column", default=None, help="Column or field of the group (speaker, session, source file); pattern default: {group}.")
@click.option("--fold-column", default=None, help="Column or field of the dataset's own folds (for make-folds --from-column fold).")
@click.option("--test-column", default=None, help="Column or field that marks test clips (with --test-value).")
@click.option("--test-value", "test_values", multiple=True,
              help="A --test-column value of test clips (repeatable, or comma-separated).")
@click.option("--copy", is_flag=True, help="Copy the audio instead of hard-linking it (symlinks where links fail).")
@click.option("--skip-missing", is_flag=True, help="Go on without missing audio files, listing them.")
@click.option("--unlabeled", "unlabeled_dir", type=click.Path(path_type=Path), default=None,
              help="A folder of audio without labels: its files become train_unlabeled/ (for self-train).")
def prepare(src, out, csv_file, pattern, file_column, audio_dir, label_column, separator, group_column,
            fold_column, test_column, test_values, copy, skip_missing, unlabeled_dir):
    """Turn a labeled collection at SRC into the FSDKaggle2019 layout at OUT (a new folder).

    SRC is a folder per class (default), or described by --csv or --pattern, or a BirdCLEF
    competition folder (train.csv, train_audio/: secondary labels kept, author as the group).
    Audio is linked or copied, never re-encoded; OUT also gets metadata.csv (groups, given folds)
    for make-folds.
    """
    from freesound.data.prepare import prepare_collection

    values = [v.strip() for value in test_values for v in value.split(",") if v.strip()]
    report = prepare_collection(
        src, out, csv=csv_file, pattern=pattern, file_column=file_column, audio_dir=audio_dir,
        label_column=label_column, separator=separator, group_column=group_column, fold_column=fold_column,
        test_column=test_column, test_values=values, mode="copy" if copy else "link", skip_missing=skip_missing,
        unlabeled=unlabeled_dir,
    )
    for source, fname in report.renamed:
        click.echo(f"  renamed: {source} -> {fname} (another file has its name)")
    for where, path in report.missing:
        click.echo(f"  skipped: {where}: {path} not found", err=True)
    if report.dropped_secondary:
        click.echo(f"  left out {sum(report.dropped_secondary.values())} secondary label(s) of "
                   f"{len(report.dropped_secondary)} species outside the class list", err=True)
    how = ", ".join(f"{n} {word}" for n, word in ((report.linked, "hard-linked"), (report.symlinked, "symlinked"),
                                                  (report.copied, "copied")) if n)
    extra = "".join(f", {words}" for flag, words in ((report.has_groups, "a group column (make-folds --group-by group)"),
                                                     (report.has_folds, "the CSV's own folds")) if flag)
    pool = f", {report.unlabeled} unlabelled" if report.unlabeled else ""
    click.echo(f"prepared: {report.train} training{pool} and {report.test} test clips of {len(report.classes)} classes "
               f"({how}; {len(report.renamed)} renamed, {len(report.missing)} missing skipped{extra}) -> {report.out}")


@main.command("make-folds")
@data_option
@work_option
@click.option("--folds", "n_folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
@click.option("--group-by", default=None,
              help="Keep each group in one fold: a column of DATA/metadata.csv (e.g. group, from prepare).")
@click.option("--stratify", is_flag=True, help="Balance classes across folds (iterative stratification if multi-label).")
@click.option("--from-column", default=None, help="Use the dataset's own folds: a column of DATA/metadata.csv (e.g. fold).")
@click.option("--metadata", type=click.Path(path_type=Path), default=None,
              help="Read --group-by / --from-column from this CSV (fname + columns) instead.")
def make_folds_command(data_dir, work_dir, n_folds, seed, group_by, stratify, from_column, metadata):
    """Split the curated clips into K folds (writes <work>/folds.csv).

    The default is the method's shuffled KFold. The folds written are checked: no group in two
    folds, and a warning names any class missing from a fold's training part.
    """
    from freesound.data.dataset import load_dataset
    from freesound.data.folds import dataset_folds, write_folds

    if from_column and stratify:
        raise click.UsageError("--from-column takes the dataset's folds as they are; drop --stratify")
    result = dataset_folds(load_dataset(data_dir), n_folds=n_folds, seed=seed, group_by=group_by,
                           stratify=stratify, from_column=from_column, metadata=metadata)
    trained_on_old = _trained_on_other_folds(work_dir, result.folds)
    path = write_folds(work_dir, result.folds)
    if trained_on_old:
        click.echo(f"warning: {path} now holds other folds than {', '.join(trained_on_old)} trained on; predict "
                   "refuses their out-of-fold predictions until they are trained again", err=True)
    sizes = ", ".join(str(n) for n in result.folds.fold.value_counts().sort_index())
    groups = f", {result.n_groups} groups kept apart" if result.n_groups else ""
    given = "".join(f", {value!r} -> {k}" for value, k in (result.mapping or {}).items())
    click.echo(f"folds: {result.folds.fold.nunique()} folds of {sizes} clips ({result.method}{groups}{given}) -> {path}")


def _trained_on_other_folds(work_dir, folds) -> list:
    """The experiments under ``work_dir`` with weights, when ``folds`` replaces a folds.csv that
    splits the clips otherwise (empty when there is none, or it splits them the same way)."""
    import pandas as pd

    from freesound.paths import folds_path

    if not folds_path(work_dir).is_file():
        return []
    try:
        old = pd.read_csv(folds_path(work_dir)).set_index("fname").fold.sort_index()
        new = folds.set_index("fname").fold.sort_index()
        if old.index.equals(new.index) and (old.to_numpy() == new.to_numpy()).all():
            return []
    except (ValueError, KeyError):  # unreadable or of another shape: another split all the same
        pass
    return sorted({path.parent.parent.name for path in (Path(work_dir) / "experiments").glob("*/fold_*/model.pt")})


def _check_device(ctx, param, value):
    """The device (default: ``settings.default_device()``), once one tiny convolution ran there."""
    import torch

    from freesound.predict.device import require_device

    if value is not None:
        try:
            torch.device(value)
        except RuntimeError:
            raise click.BadParameter(f"{value!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
        try:
            torch.empty(0, device=value)
        except (AssertionError, RuntimeError):  # torch asserts when built without CUDA
            raise click.BadParameter(f"device {value!r} is not available on this machine") from None
    device = value or settings.default_device()
    require_device(_probed_device(device))
    return device


def _probed_device(device: str) -> str:
    """The device a command on ``device`` will use: under torchrun, a bare ``cuda`` is the
    process's own GPU, ``cuda:<LOCAL_RANK>`` (probing ``cuda:0`` from every process would put a
    CUDA context of each on GPU 0)."""
    import torch

    try:
        distributed = settings.torchrun_environment()
    except ValueError:
        return device  # the command itself reports the bad variable
    if distributed and device == "cuda":
        return str(torch.device("cuda", distributed["local_rank"]))
    return device


def device_option(function):
    return click.option("--device", default=None, callback=_check_device,
                        help="torch device (default: cuda when present, else cpu); checked with one tiny "
                             "convolution before anything else.")(function)


def precision_option(function):
    return click.option("--precision", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
                        help="Arithmetic of the models on CUDA: fp16 autocast or fp32 (the CPU always "
                             "predicts in fp32).")(function)


def window_options(function):
    """``--hop``, ``--combine``, ``--smooth`` and ``--file-rescale``: how ``--windows`` rows are
    made (``predict`` and the kernels alike; ``freesound.predict.postprocess``, whose ``COMBINE``
    the choices repeat: importing it would load NumPy at every command's start)."""
    for option in reversed((
        click.option("--hop", "hop_seconds", type=click.FloatRange(0, min_open=True), default=None,
                     help="With --windows: seconds between window starts [default: the window]."),
        click.option("--combine", type=click.Choice(["gmean", "mean", "min"]), default="gmean", show_default=True,
                     help="With --windows: how folds and experiments combine per window."),
        click.option("--smooth", default=None,
                     help="With --windows: weights over neighbouring windows, centred, e.g. 0.15,0.7,0.15 "
                          "(renormalised at a file's ends)."),
        click.option("--file-rescale", type=click.FloatRange(0), default=None,
                     help="With --windows: multiply each window by the file's maximum per class to this power."),
    )):
        function = option(function)
    return function


def tracking_options(what: str, added: str = ""):
    """``--track`` (repeatable) and ``--tracking-uri``: log ``what`` to experiment trackers."""

    def decorate(function):
        function = click.option("--tracking-uri", default="",
                                help="MLflow's tracking URI, e.g. http://127.0.0.1:5000 (default: sqlite store "
                                     "WORK/mlflow.db).")(function)
        return click.option("--track", "trackers", type=click.Choice(["tensorboard", "mlflow", "wandb"]),
                            multiple=True,
                            help=f"Log {what} to this experiment tracker too (repeatable{added}); needs pip install "
                                 "'freesound[tracking]'. See docs/tracking.md.")(function)

    return decorate


@main.command()
@click.argument("experiment")
@data_option
@work_option
@experiments_dir_option
@click.option("--fold", "folds", type=int, multiple=True, help="Train only this fold (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the experiment's max_epochs.")
@device_option
@click.option("--resume", is_flag=True, help="Continue interrupted folds from their saved state (refused, naming the settings, if the experiment changed since; max_epochs and workers may change).")
@click.option("--no-oof", is_flag=True, help="Skip the out-of-fold prediction once every fold is trained.")
@click.option("--devices", default=None,
              help="Train folds in parallel, one process per device, e.g. cuda:0,cuda:1 (a device may repeat: "
                   "cpu,cpu). Not under torchrun, which trains each fold on all of its processes.")
@tracking_options("every fold", "; added to the experiment's [tracking] ones")
def train(experiment, data_dir, work_dir, experiments_dir, folds, epochs, device, resume, no_oof, devices, trackers,
          tracking_uri):
    """Train EXPERIMENT (a name under experiments/ or a TOML path) on every fold.

    Log-mels not cached yet are computed first, with the experiment's [audio] settings (`features`
    does it up front); a clip that cannot be used stops training with its name and the reason.
    Once every fold in folds.csv has weights, predicts each fold's held-out clips (tiled, as
    `predict` does) and reports the per-fold and overall out-of-fold lwlrap.

    With --track (or the experiment's [tracking]) every fold is also a run in TensorBoard, MLflow
    or W&B, and the out-of-fold result one more, with `report`'s PNGs (docs/tracking.md).

    Under torchrun (torchrun --nproc_per_node=N -m freesound train ...) the N processes train each
    fold together (DistributedDataParallel, each on its slice of every batch, cuda:<LOCAL_RANK> or
    the CPU); process 0 writes the files and prints.
    """
    from freesound.config import load_experiment, with_trackers
    from freesound.data.dataset import load_dataset
    from freesound.metrics import format_scores
    from freesound.paths import experiment_dir
    from freesound.training.context import RunContext
    from freesound.training.experiment_training import IN_PROCESS, OnDevices, Torchrun, train_folds
    from freesound.training.fold_devices import parse_devices

    try:
        distributed = settings.torchrun_environment()
    except ValueError as error:
        raise FreesoundError(str(error)) from None
    given_device = click.get_current_context().get_parameter_source("device") != click.core.ParameterSource.DEFAULT
    if devices is not None and (given_device or distributed):
        raise click.UsageError("--devices trains folds in parallel on the devices it names: not with --device, "
                               "nor under torchrun")
    where = (OnDevices(tuple(parse_devices(devices))) if devices is not None
             else Torchrun(distributed) if distributed else IN_PROCESS)
    config = with_trackers(load_experiment(experiment, experiments_dir), trackers, tracking_uri)
    context = RunContext.create(device, log=click.echo,
                                feature_workers=settings.default_workers())
    report = train_folds(config, load_dataset(data_dir), work_dir, folds=list(folds) or None, context=context,
                         where=where, score_oof=not no_oof, max_epochs=epochs, resume=resume)
    if not report.main:
        return
    crop = {"center": "centre crop", "first": "first chunk", "whole": "whole clips"}[config.train.valid_crop]
    click.echo(f"\n{config.name}: best val {config.train.metric} per fold ({crop})")
    for result in report.folds:
        click.echo(f"  fold {result.fold}: {result.best_lwlrap:.4f} at epoch {result.best_epoch} of {result.epochs}")
    click.echo(f"weights -> {experiment_dir(work_dir, config.name)}")
    if no_oof:
        return
    if report.untrained:
        click.echo(f"out-of-fold lwlrap once fold(s) {', '.join(map(str, report.untrained))} are trained too")
        return
    click.echo("")
    click.echo(format_scores(config.name, report.oof_scores, top=10))
    if report.experiment.tracking.trackers:
        from freesound.tools.plots import report as report_pngs
        from freesound.training.tracking import track_result

        track_result(report.experiment, work_dir, report.oof_scores, report_pngs(config.name, work_dir)["pngs"],
                     click.echo)


@main.command("self-train")
@click.argument("experiment")
@data_option
@work_option
@experiments_dir_option
@click.option("--rounds", type=click.IntRange(1), required=True, help="Rounds after round 0 (EXPERIMENT itself).")
@click.option("--unlabeled", "unlabeled_dir", type=click.Path(path_type=Path), default=None,
              help="A folder of unlabelled audio to pseudo-label (default: DATA/train_unlabeled/).")
@click.option("--student", default=None,
              help="The experiment rounds 1.. train (default: EXPERIMENT); its [self_training] table sets the "
                   "pseudo-labels and the student's noise.")
@click.option("--fold", "folds", type=int, multiple=True, help="Train only this fold (repeatable); CV needs them all.")
@device_option
def self_train_command(experiment, data_dir, work_dir, experiments_dir, rounds, unlabeled_dir, student, folds, device):
    """Self-train EXPERIMENT on unlabelled audio for --rounds rounds (docs/self-training.md).

    Round 0 is EXPERIMENT trained as usual; round k is the experiment EXPERIMENT_r<k>, written to
    the experiments folder: the student trained on the labelled clips plus the unlabelled ones,
    pseudo-labelled by round k-1. Re-running continues where it stopped. Writes
    WORK/self_training/EXPERIMENT/rounds.csv and rounds.png.
    """
    from freesound.config import load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.tools.self_training import ROUNDS_CSV, ROUNDS_PNG, self_train
    from freesound.tools.tracked_runs import track_round
    from freesound.training.context import RunContext

    config = load_experiment(experiment, experiments_dir)
    student_config = load_experiment(student, experiments_dir) if student else None
    context = RunContext.create(device, log=click.echo, feature_workers=settings.default_workers())
    results = self_train(config, load_dataset(data_dir), work_dir, rounds, student=student_config,
                         unlabeled=unlabeled_dir, experiments_dir=experiments_dir, folds=list(folds) or None,
                         context=context,
                         on_round=lambda result, round_experiment: track_round(result, round_experiment, work_dir,
                                                                               config.name, click.echo))
    click.echo(f"\n{config.name}: CV lwlrap per round")
    for result in results:
        cv = "untrained folds" if result.cv_lwlrap is None else f"{result.cv_lwlrap:.4f}"
        click.echo(f"  round {result.round} ({result.experiment}): {cv}")
    out_dir = Path(work_dir) / "self_training" / config.name
    click.echo(f"rounds -> {out_dir / ROUNDS_CSV}, {out_dir / ROUNDS_PNG}")


@main.command()
@click.argument("experiment")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset directory: predicts its test set in sample_submission.csv order "
                   "(and, for an experiment, its out-of-fold clips).")
@work_option
@experiments_dir_option
@click.option("--audio", "audio_dir", type=click.Path(path_type=Path), default=None,
              help="Predict every audio file under this folder instead of a test set (audio by extension, "
                   "any case; other files are listed as left out); a row's fname is the file's path relative "
                   "to the folder (a/x.wav), its name in a flat folder.")
@click.option("--all-files", is_flag=True,
              help="With --audio: decode every file under the folder, whatever its name; the decoder decides.")
@click.option("--out", "out_csv", type=click.Path(path_type=Path), default=None,
              help="Output CSV (default: <work>/predictions/<name>/test.csv or audio.csv; with --windows "
                   "test_windows.csv or audio_windows.csv).")
@click.option("--no-oof", is_flag=True, help="Skip the out-of-fold prediction of an experiment.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Tiles per forward pass.")
@click.option("--workers", type=click.IntRange(0), default=1, show_default=True,
              help="Processes decoding audio while the model runs (0: decode in this process, in turn "
                   "with the model).")
@device_option
@precision_option
@click.option("--runtime", type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]), default="torch",
              show_default=True,
              help="What runs the models on a CPU: auto is ONNX Runtime, else OpenVINO, when installed "
                   "(pip install 'freesound[onnx]'), else torch; CUDA always runs torch.")
@click.option("--allow-unfinished", is_flag=True,
              help="Use folds whose training was interrupted (their best epoch so far), with a warning.")
@click.option("--windows", "window_seconds", type=click.FloatRange(0, min_open=True), default=None,
              help="One row per window of SECONDS of each file (row_id <file stem>_<end second>, BirdCLEF's), "
                   "from the untrimmed audio; no out-of-fold pass (stackers apply per window).")
@window_options
def predict(experiment, data_dir, work_dir, experiments_dir, audio_dir, all_files, out_csv, no_oof, batch_size, workers,
            device, precision, runtime, allow_unfinished, window_seconds, hop_seconds, combine, smooth, file_rescale):
    """Predict with a trained EXPERIMENT or ENSEMBLE (name under experiments/ or TOML path).

    Writes a submission-format CSV: fname (row_id with --windows, one row per window), then one
    probability column per class. Files that cannot be used are named on stderr and in
    <out>.errors.csv, and the exit status is 1: on a test set their rows are predicted from
    silence (the submission stays complete), under --audio they are left out. Curated log-mels
    the out-of-fold step needs are computed if not cached.
    """
    from freesound.config import load_config
    from freesound.data.dataset import load_dataset
    from freesound.ensembling.predictions import run_prediction
    from freesound.metrics import format_scores

    if (data_dir is None) == (audio_dir is None):
        raise click.UsageError("give exactly one of --data (a dataset's test set) or --audio (a folder)")
    if all_files and audio_dir is None:
        raise click.UsageError("--all-files goes with --audio")
    if window_seconds is None and (hop_seconds or combine != "gmean" or smooth or file_rescale is not None):
        raise click.UsageError("--hop, --combine, --smooth and --file-rescale go with --windows")
    from freesound.predict import WindowSpec, parse_weights

    windows = WindowSpec(window_seconds, hop_seconds) if window_seconds is not None else None
    result = run_prediction(
        load_config(experiment, experiments_dir), work_dir, dataset=load_dataset(data_dir) if data_dir else None,
        audio_dir=audio_dir, out_csv=out_csv, oof=not no_oof, device=device,
        batch_size=batch_size, workers=workers, all_files=all_files, feature_workers=settings.default_workers(),
        precision=precision, runtime=runtime, allow_unfinished=allow_unfinished, windows=windows, combine=combine,
        smooth=parse_weights(smooth), file_rescale=file_rescale, log=click.echo,
    )
    if result.audio_folder is not None and result.audio_folder.left_out:
        click.echo(f"left out as not audio by name: {result.audio_folder.describe_left_out()}; "
                   "--all-files decodes every file", err=True)
    if result.oof_scores is not None:
        click.echo(format_scores(result.name, result.oof_scores, top=10))
    rows = f"{len(result.predictions)} windows" if windows else f"{len(result.predictions)} clips"
    click.echo(f"{result.name}: predicted {rows} with {result.checkpoints} first-level and "
               f"{result.stacker_checkpoints} stacker checkpoints -> {result.out_csv}")
    if result.truncated:
        click.echo(f"{len(result.truncated)} file(s) are truncated and were predicted from the audio that decodes: "
                   f"{', '.join(fname for fname, _ in result.truncated)}", err=True)
    for fname, reason in result.failures:
        click.echo(f"failed: {fname}: {reason}", err=True)
    if result.failures:
        click.echo(f"{len(result.failures)} file(s) could not be used; listed in {result.errors_csv}", err=True)
        sys.exit(1)


@main.command()
@click.argument("ensemble")
@data_option
@work_option
@experiments_dir_option
@device_option
@click.option("--metric", type=click.Choice(METRIC_NAMES), default="lwlrap", show_default=True,
              help="The OOF score reported for the experiments, stackers and blend (stackers train by val lwlrap).")
@tracking_options("each stacker and the blend")
def stack(ensemble, data_dir, work_dir, experiments_dir, device, metric, trackers, tracking_uri):
    """Train ENSEMBLE's stackers on its experiments' out-of-fold predictions and score the blend.

    With --track each stacker (its settings, overall, per-fold and per-class OOF lwlrap and
    per-class PNG) and the blend are runs in the trackers, grouped under ENSEMBLE's name
    (docs/tracking.md).
    """
    from freesound.config import load_ensemble
    from freesound.data.dataset import load_dataset
    from freesound.ensembling.stack import train_stackers
    from freesound.tools.tracked_runs import ensemble_trackers, track_stack
    from freesound.training.oof import ensure_oof
    from freesound.training.tracking import usable_trackers

    config = load_ensemble(ensemble, experiments_dir)
    tracking = usable_trackers(ensemble_trackers(config, trackers, tracking_uri), work_dir, config.name, click.echo)
    dataset = load_dataset(data_dir)
    ensure_oof(config.experiments, dataset, work_dir, device=device, log=click.echo)
    cv = train_stackers(config, dataset, work_dir, device=device, log=click.echo, metric=metric)
    click.echo(f"\n{config.name}: OOF {metric}")
    for name, score in cv.items():
        click.echo(f"  {name:<32} {score:.4f}")
    track_stack(tracking, config, dataset, work_dir, cv, click.echo, metric)


@main.command("select-ensemble")
@click.argument("experiments", nargs=-1, required=True)
@data_option
@work_option
@experiments_dir_option
@click.option("--max-size", type=click.IntRange(1), default=None,
              help="Most experiments in a subset (default: all given).")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None,
              help="Ensemble file to write (default: <experiments>/selected.toml).")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True, help="Subsets shown and plotted.")
@click.option("--stackers-from", default=None,
              help="Copy the [[stackers]] tables of this ensemble file (default: one FCNet with default settings).")
@click.option("--no-stacker", is_flag=True, help="Write a plain geometric-mean blend with no stacker.")
@click.option("--metric", type=click.Choice(METRIC_NAMES), default="lwlrap", show_default=True,
              help="The blend's OOF score to maximise (roc_auc and cmap score one subset at a time: slower).")
@device_option
def select_ensemble_command(experiments, data_dir, work_dir, experiments_dir, max_size, out_file, top,
                            stackers_from, no_stacker, metric, device):
    """Pick the subset of trained EXPERIMENTS whose geometric-mean blend has the best OOF score
    (lwlrap, or --metric).

    Every subset of 1..--max-size experiments is scored while there are at most 20,000 of them
    (e.g. all subsets of 14 experiments); beyond that, greedy forward selection adds the
    experiment that most improves the blend until nothing improves or the subset is full.
    Experiments without OOF predictions are predicted first. Prints the top subsets and writes the
    best as an ensemble file for `stack`, `predict` and `build-kernel`, with the table beside it
    (<out>.selection.csv, every subset; <out>.selection.png, the top ones).
    """
    from freesound.config import StackerConfig, load_ensemble
    from freesound.data.dataset import load_dataset
    from freesound.tools.select import experiment_names, format_selection, load_oof_set, save_selection, select_ensemble
    from freesound.training.oof import ensure_oof

    if no_stacker and stackers_from:
        raise click.UsageError("give at most one of --stackers-from and --no-stacker")
    stackers = (() if no_stacker else load_ensemble(stackers_from, experiments_dir).stackers if stackers_from
                else (StackerConfig(),))
    names = experiment_names(experiments, experiments_dir)
    dataset = load_dataset(data_dir)
    ensure_oof(names, dataset, work_dir, device=device, log=click.echo)
    selection = select_ensemble(load_oof_set(names, dataset, work_dir, log=click.echo), max_size, metric=metric)
    click.echo(format_selection(selection, top))
    paths = save_selection(selection, out_file or Path(experiments_dir) / "selected.toml", stackers=stackers, top=top)
    click.echo(f"ensemble -> {paths['ensemble']}\ntable -> {paths['csv']}\nplot -> {paths['png']}")


def _search_help() -> str:
    """``search``'s help, its example and default spaces read from ``freesound.tools.spaces``."""
    from freesound.tools.spaces import DEFAULT_EXPERIMENT_SPACE, DEFAULT_STACKER_SPACE, EXAMPLE_SPACE, describe_space

    def block(lines):
        return "\n".join("  " + line for line in lines)

    return f"""Search EXPERIMENT's settings, or an ENSEMBLE's first stacker's, by OOF lwlrap (Optuna).

Each trial trains with the normal training code and is scored by its out-of-fold lwlrap (or
--metric: roc_auc, cmap) on the trained folds; trials that trail are pruned after each epoch. The study lives in
<work>/search/<name>/study.db (or --storage): rerunning the command resumes it, and several
processes or machines running it on one storage share the trials. trials.csv and
progress.png are written beside it and the best trial's config as a new experiment (or
ensemble) file after every trial. With --track (or the experiment's [tracking]) each trial is a
run in the trackers, grouped as search-<name>, its folds' runs nested under it (docs/tracking.md).

\b
The space is TOML, one entry per config key (experiments: dotted keys such as train.lr,
model.params.dropout, mixers.prob; ensembles: stacker fields such as lr, p_dropout):
{block(EXAMPLE_SPACE.splitlines())}

\b
Default space for an experiment:
{block(describe_space(DEFAULT_EXPERIMENT_SPACE))}
\b
Default space for an ensemble's stacker:
{block(describe_space(DEFAULT_STACKER_SPACE))}"""


@main.command(help=_search_help())
@click.argument("experiment")
@data_option
@work_option
@experiments_dir_option
@click.option("--trials", type=click.IntRange(1), required=True,
              help="Total number of trials; finished ones are kept, so rerunning resumes.")
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="Search space TOML (default: see above).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the sampler: trial i samples with a seed made from (seed, i).")
@click.option("--fold", "folds", type=int, multiple=True, help="Train and score trials on this fold only (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override max_epochs in every trial (the best config keeps its own).")
@click.option("--name", default=None, help="Search name (default: EXPERIMENT's); trials train as <name>-trial<i>.")
@click.option("--out", "out_file", type=click.Path(path_type=Path), default=None,
              help="Best config file (default: <experiments>/<name>-best.toml).")
@click.option("--sampler", type=click.Choice(["tpe", "random", "grid"]), default="tpe", show_default=True,
              help="Optuna's sampler; grid visits every value of choice and int distributions.")
@click.option("--pruner", type=click.Choice(["median", "hyperband"]), default="median", show_default=True,
              help="Stops trials whose val score trails the others'.")
@click.option("--metric", type=click.Choice(METRIC_NAMES), default=None,
              help="Score trials by this OOF metric (default: the experiment's [train] metric, which trials also "
                   "train by; lwlrap for an ensemble's stacker).")
@click.option("--no-prune", is_flag=True, help="Train every trial to its end.")
@click.option("--storage", default=None,
              help="Optuna storage URL shared by several processes or machines, e.g. postgresql://user@host/db "
                   "(default: the SQLite file <work>/search/<name>/study.db).")
@device_option
@tracking_options("each trial (its folds nested under it)", "; added to the experiment's [tracking] ones")
def search(experiment, data_dir, work_dir, experiments_dir, trials, space_file, seed, folds, epochs, name, out_file,
           sampler, pruner, metric, no_prune, storage, device, trackers, tracking_uri):
    import optuna

    from freesound.data.dataset import load_dataset
    from freesound.tools.search import TrialSetup, format_trials, load_space, load_target, run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial gets its own line below
    target = load_target(experiment, experiments_dir).tracked(trackers, tracking_uri).with_metric(metric)
    space = load_space(space_file, target)
    setup = TrialSetup.create(load_dataset(data_dir), work_dir, folds, device=device,
                              max_epochs=epochs)
    result = run_search(target, space, setup, trials=trials, seed=seed, name=name, out=out_file,
                        experiments_dir=experiments_dir, sampler=sampler, pruner=None if no_prune else pruner,
                        storage=storage, log=click.echo)
    click.echo(f"\n{name or target.name}: best of {len(result.trials)} trials by OOF {result.metric}")
    click.echo(format_trials(result.trials))
    click.echo(f"trials -> {result.paths['csv']}\nplot -> {result.paths['png']}\nbest config -> {result.paths['best']}")


@main.command()
@click.argument("predictions_csv", type=click.Path(path_type=Path))
@click.option("--labels", "labels_csv", required=True, type=click.Path(path_type=Path),
              help="CSV of the true labels, keyed as the predictions are (fname for clips, row_id for windows), "
                   "with a labels column or one 0/1 column per class: e.g. test_labels.csv, BirdCLEF's solution.csv.")
@click.option("--top", type=click.IntRange(1), default=None, help="Show only the N worst classes.")
@click.option("--subset", is_flag=True,
              help="Score only the labelled clips that have predictions (default: every labelled clip must).")
@click.option("--data", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Dataset whose sample_submission.csv gives the class vocabulary the class columns must be "
                   "(default: the --labels file's folder, when it holds one).")
@click.option("--metric", "metrics", multiple=True, type=click.Choice(METRIC_NAMES),
              help="Metric to report (repeatable; default lwlrap): lwlrap (FSDKaggle2019), roc_auc (macro over "
                   "the classes with a positive, BirdCLEF 2024-25) or cmap (padded cmAP, BirdCLEF 2023).")
def evaluate(predictions_csv, labels_csv, top, subset, data_dir, metrics):
    """Score a submission-format CSV: overall and per-class lwlrap, ROC-AUC or cmAP.

    Rows are clips (first column fname) or windows (row_id, BirdCLEF's); --labels is keyed the
    same way, with a labels column or one 0/1 column per class. Every row of --labels must have
    exactly one row of predictions (or give --subset); scores are compared in full float64
    precision. The class columns must be the dataset's classes, no more and no fewer (an extra
    column would change the score).
    """
    from freesound.metrics import format_scores
    from freesound.tools.evaluate import evaluate_csv

    vocabulary = None if data_dir is None else data_dir / "sample_submission.csv"
    scores = evaluate_csv(predictions_csv, labels_csv, subset=subset, vocabulary=vocabulary,
                          metrics=metrics or ("lwlrap",))
    click.echo(format_scores(predictions_csv.name, scores, top=top, label="", unit=scores["unit"]))
    if scores["clips"] < scores["labelled_clips"]:
        click.echo(f"scored {scores['clips']} of the {scores['labelled_clips']} labelled {scores['unit']} (--subset)")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--experiment", required=True,
              help="A trained experiment: its name (under <work>/experiments/) or its TOML file.")
@work_option
@click.option("--top", type=click.IntRange(1), default=5, show_default=True,
              help="Classes shown per file (per window with --timeline).")
@device_option
@click.option("--timeline", is_flag=True,
              help="Tag each FILE window by window: print the top classes per window, write "
                   "<out>/<stem>_timeline.csv (row_id + classes) and a heat map <stem>_timeline.png.")
@click.option("--windows", "window_seconds", type=click.FloatRange(0, min_open=True), default=None,
              help="With --timeline: seconds per window [default: 5].")
@click.option("--hop", "hop_seconds", type=click.FloatRange(0, min_open=True), default=None,
              help="With --timeline: seconds between window starts [default: the window].")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="With --timeline: where the CSVs and PNGs go [default: <work>/predictions/<experiment>/timeline].")
def tag(files, experiment, work_dir, top, device, timeline, window_seconds, hop_seconds, out_dir):
    """Print the top classes of each audio FILE.

    An undecodable FILE gets one error line on stderr and exit status 1; the others are still tagged.
    """
    from freesound.config import trained_experiment_name
    from freesound.ensembling.specs import trained_tagger

    if not timeline and (window_seconds or hop_seconds or out_dir):
        raise click.UsageError("--windows, --hop and --out go with --timeline")
    name = trained_experiment_name(experiment)
    tagger = trained_tagger(work_dir, name, device=device)
    if timeline:
        _tag_timelines(tagger, files, name, work_dir, top, window_seconds or 5.0, hop_seconds, out_dir)
        return
    failures, truncated = [], []
    # Rows named by the file names, or, where two share one (a/x.wav, b/x.wav), by the paths as given.
    names = [Path(path).name for path in files]
    if len(set(names)) < len(names):
        names = [str(path) for path in files]
    frame = tagger.predict_files(files, on_error="skip", failures=failures, truncated=truncated, names=names)
    for fname, row in frame.iterrows():
        click.echo(fname)
        for label, prob in row.sort_values(ascending=False).head(top).items():
            click.echo(f"  {prob:6.3f}  {'#' * int(round(prob * 20)):<20}  {label}")
    if truncated:
        click.echo(f"{len(truncated)} file(s) are truncated and were tagged from the audio that decodes: "
                   f"{', '.join(fname for fname, _ in truncated)}", err=True)
    for fname, reason in failures:
        click.echo(f"error: cannot decode {fname}: {reason}", err=True)
    if failures:
        sys.exit(1)


def _tag_timelines(tagger, files, experiment, work_dir, top, window_seconds, hop_seconds, out_dir):
    """``tag --timeline``: each file window by window (``freesound.tools.timeline``)."""
    from freesound.audio import AudioDecodeError
    from freesound.paths import predictions_dir
    from freesound.predict import WindowSpec
    from freesound.tools.timeline import format_timeline, tag_timeline

    windows = WindowSpec(window_seconds, hop_seconds)
    out_dir = out_dir or predictions_dir(work_dir, experiment) / "timeline"
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise FreesoundError(f"--out {out_dir} is a file; the timelines' CSV and PNG files need a folder")
    failed = False
    for path in files:
        try:
            result = tag_timeline(tagger, path, windows, out_dir, top=max(top, 10))
        except AudioDecodeError as error:
            click.echo(f"error: cannot decode {Path(path).name}: {error.reason}", err=True)
            failed = True
            continue
        click.echo(f"{Path(path).name}: {len(result.probabilities)} windows of {windows.seconds:g} s "
                   f"every {windows.hop:g} s")
        for line in format_timeline(result, windows.seconds, top):
            click.echo(line)
        click.echo(f"timeline -> {result.csv}, {result.png}")
    if failed:
        sys.exit(1)


@main.command("import-argus")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Experiment name to import as.")
@work_option
@click.option("--stacker", is_flag=True, help="SRC holds FCNet stacker checkpoints.")
def import_argus_command(src, name, work_dir, stacker):
    """Import the original team's pytorch-argus checkpoints (SRC/fold_<k>/model-*.pth)."""
    from freesound.config import AudioConfig
    from freesound.tools.argus_import import import_argus

    written = import_argus(src, name, work_dir, stacker=stacker, audio_config=None if stacker else AudioConfig())
    for path in written:
        click.echo(f"imported -> {path}")


@main.command("import-weights")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--format", "weights_format", required=True,
              help="The checkpoint's family: panns (PANNs CNN14/CNN10/CNN6) or efficientat (EfficientAT MobileNetV3s).")
@click.option("--name", required=True, help="Experiment name to import as (writes EXPERIMENTS/NAME.toml).")
@work_option
@experiments_dir_option
def import_weights_command(file, weights_format, name, work_dir, experiments_dir):
    """Import a released AudioSet tagger's checkpoint FILE as an experiment of the 527 AudioSet classes."""
    from freesound.tools.import_weights import import_weights

    checkpoint, toml_path = import_weights(file, weights_format, name, work_dir, experiments_dir)
    click.echo(f"imported -> {checkpoint}")
    click.echo(f"experiment -> {toml_path} (freesound tag FILE --experiment {name})")


@main.command()
@click.argument("experiment")
@data_option
@work_option
@experiments_dir_option
@click.option("--curated-below", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Propose new labels for curated clips whose OOF precision is below this.")
@click.option("--promote-at", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Propose noisy clips as trusted when their given labels score at least this.")
@click.option("--remove-below", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Propose removing noisy clips whose every given label scores below this.")
@device_option
def relabel(experiment, data_dir, work_dir, experiments_dir, curated_below, promote_at, remove_below, device):
    """Propose label corrections from a trained EXPERIMENT's predictions, for review."""
    from freesound.config import load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.tools.relabel import propose_relabels
    from freesound.training.oof import ensure_oof

    name = load_experiment(experiment, experiments_dir).name
    dataset = load_dataset(data_dir)
    ensure_oof([name], dataset, work_dir, device=device, log=click.echo)
    result = propose_relabels(name, dataset, work_dir, device=device, curated_below=curated_below,
                              promote_at=promote_at, remove_below=remove_below)
    removed = sum(labels is None for labels in result.noisy_proposals.values())
    click.echo(f"{name}: {len(result.curated_proposals)} curated relabels -> {result.paths['curated']}")
    click.echo(f"{name}: {len(result.noisy_proposals) - removed} noisy clips to trust, {removed} to remove "
               f"-> {result.paths['noisy']}")
    click.echo(f"review table (worst curated first, best noisy first) -> {result.paths['review']}")


@main.command()
@click.argument("teacher")
@click.option("--student", required=True, help="The student experiment (a name under experiments/ or a TOML path), "
              "e.g. small_student.")
@data_option
@work_option
@experiments_dir_option
@click.option("--fold", "folds", type=int, multiple=True, help="Train only this fold (repeatable).")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Override the student's max_epochs.")
@click.option("--weight", type=click.FloatRange(0, 1), default=None,
              help="Weight of the teacher's probabilities against the labels (default: the student's [targets] weight).")
@device_option
@click.option("--resume", is_flag=True, help="Continue interrupted folds from their saved state.")
def distill(teacher, student, data_dir, work_dir, experiments_dir, folds, epochs, weight, device, resume):
    """Train a small STUDENT on TEACHER's soft predictions (an experiment or an ensemble).

    Curated clips learn from the teacher's out-of-fold predictions, noisy ones from its fold
    models' geometric mean (cached under <work>/predictions/<teacher>/), mixed with the labels.
    The student is an ordinary experiment: predict and build-kernel use it by its name.
    """
    from freesound.config import load_experiment
    from freesound.data.dataset import load_dataset
    from freesound.paths import experiment_dir
    from freesound.tools.distill import distill as distill_student
    from freesound.training.context import RunContext

    context = RunContext.create(device, log=click.echo,
                                feature_workers=settings.default_workers())
    result = distill_student(teacher, load_experiment(student, experiments_dir), load_dataset(data_dir), work_dir,
                             folds=list(folds) or None, experiments_dir=experiments_dir, weight=weight,
                             context=context, max_epochs=epochs, resume=resume)
    name = result.student.name
    click.echo(f"\n{name} (student of {teacher}, weight {result.student.targets.weight:g}) -> "
               f"{experiment_dir(work_dir, name)}")
    if result.training.untrained:
        click.echo(f"out-of-fold lwlrap once fold(s) {', '.join(map(str, result.training.untrained))} are trained too")
        return
    click.echo(f"out-of-fold lwlrap: student {result.training.oof_scores['lwlrap']:.4f}, "
               f"teacher {result.teacher_lwlrap:.4f}")


@main.command("experiments")
@experiments_dir_option
def experiments_command(experiments_dir):
    """List the experiment and ensemble names that commands accept, and where each comes from.

    A name is looked up in --experiments first, then among the presets shipped with the package.
    """
    from freesound.config import available_experiments, presets_dir

    entries = available_experiments(experiments_dir)
    width = max([len(entry.name) for entry in entries] + [4])
    click.echo(f"{'name':<{width}}  {'kind':<10}  from")
    for entry in entries:
        note = "  (overridden by the experiments folder)" if entry.overridden else ""
        note += f"  ({entry.problem})" if entry.problem else ""
        click.echo(f"{entry.name:<{width}}  {entry.kind:<10}  {entry.source}: {entry.path}{note}")
    click.echo(f"experiments folder: {Path(experiments_dir).resolve()}; presets: {presets_dir()}")


@main.command("build-kernel")
@click.option("--experiment", default=None, help="Trained experiment for kernel/kernel.py.")
@click.option("--ensemble", default=None, help="Ensemble file for kernel/ensemble_kernel.py.")
@work_option
@experiments_dir_option
@click.option("--out", "out_dir", default="kernel", show_default=True, type=click.Path(path_type=Path),
              help="Where the kernel scripts and kernel-metadata.json go.")
@click.option("--dataset-id", default=None, help="owner/slug of the weights dataset on Kaggle.")
@click.option("--kernel-id", default=None, help="owner/slug of the pushed kernel (default: from its title).")
@precision_option
@click.option("--time-limit", type=click.FloatRange(min=1), default=None,
              help="The kernels' time budget in seconds [default: 3000 on a GPU, 12600 on a CPU, under Kaggle's "
                   "1 h and 4 h; 4800 with --target cpu4]; a kernel projected to overrun switches to a cheaper "
                   "plan it names.")
@click.option("--estimate", is_flag=True,
              help="Write nothing: print the kernels' expected time on the test set, from a short measurement "
                   "of their models and front end on this machine (or at --tiles-per-second).")
@click.option("--clips", type=click.IntRange(1), default=None,
              help="With --estimate: test clips [default: 4481, the competition's; 600 soundscapes with --target "
                   "cpu4].")
@click.option("--audio-hours", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --estimate: hours of test audio [default: 12.9, the competition's; 10 with --target "
                   "cpu4].")
@click.option("--estimate-audio", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --estimate: a folder of test audio whose files' lengths are used instead.")
@click.option("--tiles-per-second", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --estimate: one model's rate on the target GPU (make gpu-check or "
                   "benchmarks/bench_inference.py there) instead of measuring this machine.")
@click.option("--allow-unfinished", is_flag=True,
              help="Bundle folds whose training was interrupted (their best epoch so far), with a warning.")
@click.option("--windows", "window_seconds", type=click.FloatRange(0, min_open=True), default=None,
              help="Kernels write one row per window of SECONDS of each test soundscape, in sample_submission.csv's "
                   "row_id order (BirdCLEF), as predict --windows does.")
@window_options
@click.option("--competition", default=None,
              help="The competition folder under /kaggle/input [default: freesound-audio-tagging-2019]; a "
                   "window kernel needs its own (birdclef-2025, say).")
@click.option("--test-dir", default=None, help="Its test audio folder [default: test].")
@click.option("--target", type=click.Choice(["cpu4"]), default=None,
              help="A Kaggle target's profile: cpu4 is BirdCLEF's 90 min on 4 CPU cores (budget 80 min; "
                   "--estimate on 600 one-minute soundscapes, scaled to 4 cores).")
def build_kernel(experiment, ensemble, work_dir, experiments_dir, out_dir, dataset_id, kernel_id, precision,
                 time_limit, estimate, clips, audio_hours, estimate_audio, tiles_per_second, allow_unfinished,
                 window_seconds, hop_seconds, combine, smooth, file_rescale, competition, test_dir, target):
    """Bundle the package, a weight manifest and an entry point into self-contained Kaggle kernels.

    Also writes kernel/kernel-metadata.json (kaggle kernels push) and
    <work>/experiments/dataset-metadata.json (kaggle datasets create).
    """
    from kernel_build import DEFAULT_DATASET_ID, build_kernels

    if not experiment and not ensemble:
        raise click.UsageError("give --experiment, --ensemble or both")
    if not estimate and (clips or audio_hours or estimate_audio or tiles_per_second):
        raise click.UsageError("--clips, --audio-hours, --estimate-audio and --tiles-per-second go with --estimate")
    if window_seconds is None and (hop_seconds or combine != "gmean" or smooth or file_rescale is not None):
        raise click.UsageError("--hop, --combine, --smooth and --file-rescale go with --windows")
    from freesound.kaggle import COMPETITION, TEST_DIR
    from freesound.predict import parse_weights
    from kernel_build.manifest import windows_entry

    windows = (windows_entry(window_seconds, hop_seconds, combine, parse_weights(smooth), file_rescale)
               if window_seconds is not None else None)
    if estimate:
        from kernel_build.estimate import estimate_kernels

        estimate_kernels(work_dir, experiment=experiment, ensemble=ensemble, experiments_dir=experiments_dir,
                         clips=clips, hours=audio_hours, audio_dir=estimate_audio, tiles_per_second=tiles_per_second,
                         time_limit=time_limit, allow_unfinished=allow_unfinished, windows=windows, target=target,
                         log=click.echo)
        return
    competition_entry = None
    if competition or test_dir:
        competition_entry = {"name": competition or COMPETITION, "test_dir": test_dir or TEST_DIR}
    build_kernels(work_dir, experiment=experiment, ensemble=ensemble, out_dir=out_dir,
                  dataset_id=dataset_id or DEFAULT_DATASET_ID, kernel_id=kernel_id,
                  experiments_dir=experiments_dir, precision=precision, time_limit=time_limit,
                  allow_unfinished=allow_unfinished, windows=windows, competition=competition_entry,
                  target=target, log=click.echo)


@main.command()
@click.argument("experiment")
@work_option
@experiments_dir_option
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path),
              help="Where the PNGs go (default: <work>/predictions/<name>/).")
@click.option("--example", "example_audio", default=None, type=click.Path(path_type=Path),
              help="Also draw the train-time augmentations of this audio file.")
def report(experiment, work_dir, experiments_dir, out_dir, example_audio):
    """Plot a trained EXPERIMENT's training curves and per-class lwlrap; print its CV table."""
    from freesound.audio import read_as_melspectrogram
    from freesound.config import load_experiment
    from freesound.tools.plots import report as make_report

    name = load_experiment(experiment, experiments_dir).name
    example = read_as_melspectrogram(example_audio) if example_audio else None
    result = make_report(name, work_dir, out_dir=out_dir, example_logmel=example)
    click.echo(result["table"])
    for png in result["pngs"]:
        click.echo(f"plot -> {png}")


@main.command()
@click.argument("experiments", nargs=-1, required=True)
@work_option
@click.option("--out", "out_png", default=None, type=click.Path(path_type=Path),
              help="The PNG to write (default: <work>/predictions/compare.png).")
def compare(experiments, work_dir, out_png):
    """Compare trained EXPERIMENTS (names under <work>/experiments/) side by side.

    Prints each one's best validation lwlrap per fold, their mean and the out-of-fold lwlrap (once
    `train` or `predict` has scored it), then the per-class OOF lwlrap, worst classes first; draws
    the mean validation curves, the CV scores and the per-class lwlrap in one PNG. Reads only the
    work folder.
    """
    from freesound.tools.compare import compare as compare_experiments

    out_png = out_png or Path(work_dir) / "predictions" / "compare.png"
    text, png = compare_experiments(experiments, work_dir, out_png)
    click.echo(text)
    click.echo(f"plot -> {png}")


@main.command()
@click.option("--experiment", required=True,
              help="A trained experiment: its name (under <work>/experiments/) or its TOML file.")
@work_option
@click.option("--file", "audio_file", default=None, type=click.Path(path_type=Path),
              help="Replay this file through the rolling window instead of the microphone.")
@click.option("--window", type=click.FloatRange(0.5), default=5.0, show_default=True, help="Seconds tagged at once.")
@click.option("--hop", type=click.FloatRange(0.1), default=1.0, show_default=True, help="Seconds between outputs.")
@click.option("--top", type=click.IntRange(1), default=3, show_default=True, help="Classes shown per output.")
@click.option("--input-device", default=None, help="sounddevice input device (name or index).")
@click.option("--duration", type=click.FloatRange(0), default=None, help="Stop after this many seconds.")
@device_option
def listen(experiment, work_dir, audio_file, window, hop, top, input_device, duration, device):
    """Tag microphone audio (or --file) in a rolling window, printing the top classes every hop.

    The microphone needs the optional sounddevice package: pip install 'freesound[listen]'.
    """
    from freesound.config import trained_experiment_name
    from freesound.ensembling.specs import trained_tagger
    from freesound.tools.listen import format_tags, listen_microphone, replay_file

    tagger = trained_tagger(work_dir, trained_experiment_name(experiment), device=device)
    if audio_file is not None:
        for time_s, tags in replay_file(audio_file, tagger, window_seconds=window, hop_seconds=hop, top=top):
            click.echo(format_tags(time_s, tags))
        return
    if input_device is not None and input_device.isdigit():
        input_device = int(input_device)
    listen_microphone(tagger, window, hop, top, input_device=input_device, duration_seconds=duration,
                      print_fn=click.echo)


@main.command()
@click.option("--work", "work_dir", default="data/demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the demo's dataset, weights, predictions and plots go.")
@experiments_dir_option
@click.option("--ensemble", default="ensemble", show_default=True, help="Ensemble file to train and blend.")
@click.option("--workers", type=click.IntRange(1), default=None, help="Processes for synthesis and features.")
def demo(work_dir, experiments_dir, ensemble, workers):
    """Run the whole chain on a synthetic dataset: synth, features, folds, train, stack, blend,
    kernels, a simulated Kaggle run, plots. Re-running skips what is done."""
    from freesound.tools.demo import format_summary, run_demo

    summary = run_demo(work_dir, experiments_dir=experiments_dir, ensemble=ensemble,
                       workers=workers or settings.default_workers(), log=click.echo)
    click.echo(format_summary(summary))
