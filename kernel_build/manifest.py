"""The weight manifest a kernel carries: what to load, and how to know it is the right file.

::

    {"format": 1, "freesound_version": "0.1.0", "spec": {...ensemble spec...},
     "weights": [{"path": "small/fold_0/model.pt", "bytes": 123, "sha256": "..."}, ...],
     "configs": {"small": "<config.toml text>", ...}, "precision": "fp16",
     "time_limit": {"cuda": 3000.0, "cpu": 12600.0}, "ranking": ["small", ...], "packages": ["timm"]}

``precision`` is the arithmetic the kernel predicts in on a GPU (``freesound.predict.Tagger``);
manifests without it predict in fp16 there. ``time_limit`` is the kernel's time budget in seconds,
one number or one per device type (``freesound.kaggle.budget``); ``ranking`` lists the experiments
best first by out-of-fold lwlrap (those without a score last, in ensemble order), the order in
which a kernel short of time keeps them.

Two keys appear only when a build asks for them, so other manifests stay as they were:
``windows`` (``build-kernel --windows``: ``{"seconds", "hop", "combine", "smooth", "file_rescale"}``,
BirdCLEF's rows per window of each soundscape, ``freesound.kaggle.runtime``) and ``competition``
(``{"name", "test_dir"}``, the competition folder under ``/kaggle/input`` and its test audio
folder, when they are not FSDKaggle2019's ``freesound-audio-tagging-2019`` and ``test``).

Paths are relative to the weights dataset, which is ``<work>/experiments`` uploaded as is.
``freesound.kaggle.runtime`` reads it at run time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

import freesound
from freesound.errors import FreesoundError
from freesound.fileio import file_sha256
from freesound.kaggle import COMPETITION, MANIFEST_FORMAT, TEST_DIR
from freesound.kaggle.budget import DEFAULT_BUDGET_SECONDS, budget_seconds
from freesound.predict import WindowSpec, combine_models, spec_files
from freesound.predict.postprocess import check_smoothing, rescale_power
from freesound.predict.tagger import agreeing_checkpoints, check_precision
from freesound.versions import model_packages


def missing_weights(spec: dict, weights_root) -> list:
    """The spec's weight files (relative paths) that are not files under ``weights_root``."""
    return [path for path in spec_files(spec) if not (Path(weights_root) / path).is_file()]


def experiment_config(paths: list, weights_root: Path) -> str | None:
    """The resolved ``config.toml`` training wrote beside the first fold's checkpoint that has one."""
    for path in paths:
        config = weights_root / Path(path).parent / "config.toml"
        if config.is_file():
            return config.read_text(encoding="utf-8")
    return None


def experiment_ranking(names: list, scores: dict) -> list:
    """``names`` best first by ``scores`` (name -> OOF lwlrap); unscored names last, in order."""
    scored = sorted((name for name in names if name in scores), key=lambda name: -scores[name])
    return scored + [name for name in names if name not in scores]


def windows_entry(seconds: float, hop: float | None = None, combine: str = "gmean", smooth=None,
                  file_rescale: float | None = None) -> dict:
    """The manifest's ``windows``: the window spec and the post-processing, checked as ``predict
    --windows`` checks them.

    Raises
    ------
    FreesoundError
        A bad window, hop, combination, smoothing kernel or rescaling power.
    """
    windows = WindowSpec(seconds, hop)
    combine_models(np.full((1, 1), 0.5), combine)  # names the valid ones when unknown
    return {"seconds": windows.seconds, "hop": windows.hop, "combine": combine,
            "smooth": None if smooth is None else check_smoothing(smooth).tolist(),
            "file_rescale": None if file_rescale is None else float(rescale_power(file_rescale))}


def build_manifest(spec: dict, weights_root, precision: str = "fp16", time_limit=None,
                   oof_lwlrap: dict | None = None, windows: dict | None = None,
                   competition: dict | None = None, limit_seconds: float | None = None) -> dict:
    """Hash every weight a spec needs, collect each experiment's and stacker's config and the
    optional packages its models import; ``precision`` ("fp16" or "fp32") is what the kernel predicts in on a GPU, ``time_limit`` its
    budget in seconds (default ``freesound.kaggle.budget.DEFAULT_BUDGET_SECONDS`` per device),
    ``oof_lwlrap`` (experiment -> score) ranks the experiments; ``windows`` (``windows_entry``),
    ``competition`` (``name``, ``test_dir``) and ``limit_seconds`` (a target's Kaggle limit, which
    the kernel logs beside its budget) are added when given.

    Raises
    ------
    FreesoundError
        A weight file is missing (the message names every missing file), an experiment's folds
        disagree on classes or network input (``agreeing_checkpoints``), or a time limit that is
        not a positive number of seconds.
    """
    weights_root = Path(weights_root)
    check_precision(precision)
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and 0 < time_limit < math.inf):
        raise FreesoundError(f"the time limit must be a finite, positive number of seconds, got {time_limit!r}")
    missing = missing_weights(spec, weights_root)
    if missing:
        raise FreesoundError(
            f"cannot build a kernel for {spec['name']!r}: {len(missing)} weight file(s) missing under "
            f"{weights_root}: {', '.join(missing)}"
        )
    model_names = []
    for paths in spec["experiments"].values():  # what predict refuses, the kernel would fail on after upload
        first, _ = agreeing_checkpoints([weights_root / path for path in paths])
        model_names.append(first["model_name"])
    weights = [
        {"path": path, "bytes": (weights_root / path).stat().st_size, "sha256": file_sha256(weights_root / path)}
        for path in spec_files(spec)
    ]
    groups = {**spec["experiments"], **spec.get("stackers", {})}
    configs = {name: experiment_config(paths, weights_root) for name, paths in groups.items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "freesound_version": freesound.__version__,
        "spec": spec,
        "weights": weights,
        "configs": {name: text for name, text in configs.items() if text is not None},
        "precision": precision,
        "time_limit": dict(DEFAULT_BUDGET_SECONDS) if time_limit is None else budget_seconds(time_limit, "cpu"),
        "ranking": experiment_ranking(list(spec["experiments"]), oof_lwlrap or {}),
        "packages": model_packages(model_names),
    }
    if windows is not None:
        manifest["windows"] = windows
    if limit_seconds is not None:
        manifest["limit_seconds"] = float(limit_seconds)
    if competition is not None and competition != {"name": COMPETITION, "test_dir": TEST_DIR}:
        manifest["competition"] = dict(competition)
    return manifest
