"""The ``freesound`` command line: a thin click layer over the library.

Every command calls one library function; anything it prints is a summary of that function's
result. A ``FreesoundError`` becomes one sentence on stderr and exit status 1 (``--debug`` shows
the traceback instead).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import click

from freesound import __version__, settings
from freesound.errors import FreesoundError

WORK_DEFAULT = "data"


class FreesoundGroup(click.Group):
    """Turns the library's user-facing errors into one clear sentence."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FreesoundError as error:
            if ctx.obj and ctx.obj.get("debug"):
                traceback.print_exc()
            click.echo(f"error: {error}", err=True)
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
def synth(out_dir, num_classes, num_curated, num_noisy, num_test, seed):
    """Write a synthetic FSDKaggle2019-shaped dataset to OUT_DIR."""
    from freesound.synth import synthesize_dataset

    summary = synthesize_dataset(
        out_dir, num_classes=num_classes, num_curated=num_curated, num_noisy=num_noisy,
        num_test=num_test, seed=seed,
    )
    click.echo(f"wrote {summary}")


@main.command()
@data_option
@work_option
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes (default: all available CPUs).")
def features(data_dir, work_dir, workers):
    """Compute and cache the log-mel spectrogram of every clip (resumable)."""
    from freesound.data import load_dataset
    from freesound.features import cache_features, cache_root
    from freesound.audio import AudioConfig

    dataset = load_dataset(data_dir)
    report = cache_features(dataset, work_dir, workers=workers or settings.default_workers())
    click.echo(f"features: {report.computed} computed, {report.cached} already cached, "
               f"{len(report.failures)} failed -> {cache_root(work_dir, dataset.root, AudioConfig())}")
    for split, fname, reason in report.failures:
        click.echo(f"  failed: {split}/{fname}: {reason}", err=True)
    if report.failures:
        sys.exit(1)


@main.command("make-folds")
@data_option
@work_option
@click.option("--folds", "n_folds", type=click.IntRange(2), default=5, show_default=True)
@click.option("--seed", type=int, default=42, show_default=True)
def make_folds_command(data_dir, work_dir, n_folds, seed):
    """Split the curated clips into shuffled K folds (writes <work>/folds.csv)."""
    from freesound.data import load_dataset
    from freesound.folds import make_folds, write_folds

    dataset = load_dataset(data_dir)
    folds = make_folds(dataset.curated.fname, n_folds=n_folds, seed=seed)
    path = write_folds(work_dir, folds)
    sizes = ", ".join(str(n) for n in folds.fold.value_counts().sort_index())
    click.echo(f"folds: {n_folds} folds of {sizes} clips -> {path}")
