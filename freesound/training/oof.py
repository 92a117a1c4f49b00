"""Out-of-fold prediction: each fold's model on the curated clips it never trained on.

Written to ``<work>/predictions/<experiment>/``::

    oof_tiles.npz    fnames (N,), folds (N,), offsets (N+1,), probs (total tiles, C) float32:
                     clip i's tile probabilities are probs[offsets[i]:offsets[i+1]]
    oof.csv          fname + class columns: each clip's mean over tiles
    oof_scores.json  lwlrap overall, per fold and per class; beside it the experiment's
                     ``[train] metric`` when that is another (``reported_metrics``)

The stacker trains on the per-tile probabilities; the clip means give the experiment's CV score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from freesound.data.dataset import Dataset, multi_hot, probability_frame
from freesound.data.features import ensure_features, load_features
from freesound.data.folds import read_folds
from freesound.errors import FreesoundError
from freesound.fileio import atomic_path, atomic_write_csv, atomic_write_text
from freesound.metrics import score_predictions
from freesound.paths import experiment_checkpoints, experiment_dir, predictions_dir
from freesound.predict import Tagger
from freesound.progress import progress_bar
from freesound.training.fold_guard import check_checkpoint_held_out


@dataclass(frozen=True)
class OOFTiles:
    """Per-tile out-of-fold probabilities of one experiment."""

    fnames: np.ndarray
    folds: np.ndarray
    offsets: np.ndarray
    probs: np.ndarray
    #: The experiment's tile length in frames (``[input] tile_frames``; files saved before it was
    #: recorded hold the method's 256).
    tile_frames: int = 256

    def clip(self, index: int) -> np.ndarray:
        """(n_tiles, C) probabilities of clip ``index``."""
        return self.probs[self.offsets[index]:self.offsets[index + 1]]

    def clip_means(self) -> np.ndarray:
        """(N, C) float64 mean over each clip's tiles: kept in float64, so the scores ranked (and
        written to ``oof.csv``) are the means, not their float32 roundings."""
        sums = np.add.reduceat(self.probs.astype(np.float64), self.offsets[:-1], axis=0)
        return sums / np.diff(self.offsets)[:, None]

    def reorder(self, fnames) -> "OOFTiles":
        """The same clips in another order (e.g. another experiment's)."""
        position = {name: i for i, name in enumerate(self.fnames)}
        order = [position[name] for name in fnames]
        pieces = [self.clip(i) for i in order]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
        return OOFTiles(self.fnames[order], self.folds[order], offsets, np.concatenate(pieces), self.tile_frames)


def predict_fold_tiles(name: str, dataset: Dataset, work, folds=None, *, device="cpu", batch_size: int = 64,
                       precision: str = "fp16", feature_workers: int = 1, progress: bool = True,
                       runtime: str = "torch", allow_unfinished: bool = False, log=print) -> OOFTiles:
    """Each of ``folds``' models (default: every fold of ``folds.csv``) on its held-out curated
    clips, tile by tile (``device``, ``batch_size``, ``precision`` and ``runtime`` as for ``Tagger``).

    Every named fold must have its ``fold_<k>/model.pt``, trained on this dataset's classes,
    holding out the clips ``folds.csv`` holds out in that fold (``check_checkpoint_held_out``), and
    finished training (or, with ``allow_unfinished``, a warning names it; ``experiment_checkpoints``).
    Curated log-mels not cached yet are computed first (``ensure_features``, in
    ``feature_workers`` processes, with a progress bar if ``progress``).
    """
    assignment = read_folds(work, dataset.curated.fname)
    folds = sorted(set(assignment.fold)) if folds is None else list(folds)
    checkpoints = experiment_checkpoints(experiment_dir(work, name), folds, allow_unfinished=allow_unfinished)
    for fold, checkpoint in zip(folds, checkpoints):
        check_checkpoint_held_out(checkpoint, assignment, fold, work)
    fnames, fold_ids, tiles, tile_frames = [], [], [], set()
    for fold, checkpoint in zip(folds, checkpoints):
        tagger = Tagger.from_checkpoints([checkpoint], device=device, batch_size=batch_size, precision=precision,
                                         runtime=runtime)
        tile_frames.add(tagger.input_config.tile_frames)
        if tagger.classes != list(dataset.classes):
            raise FreesoundError(f"{checkpoint} was trained on other classes than {dataset.root}")
        valid = assignment[assignment.fold == fold].fname.tolist()
        ensure_features(dataset, work, tagger.audio_config, splits=("train_curated",), workers=feature_workers,
                        progress=progress)
        logmels = load_features(dataset, work, "train_curated", valid, tagger.audio_config)
        tiles += [probs[0] for probs in tagger.tile_probabilities(logmels, track=partial(progress_bar, unit="clip", enabled=progress),
                                                                    desc=f"{name}: fold {fold} out of fold")]
        fnames += valid
        fold_ids += [fold] * len(valid)
        log(f"{name}: fold {fold} predicted {len(valid)} validation clips")
    if len(tile_frames) > 1:
        raise FreesoundError(f"{name}: its folds were trained on different tile lengths ({sorted(tile_frames)} "
                             "frames); retrain the odd folds")
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tiles])])
    return OOFTiles(np.array(fnames), np.array(fold_ids), offsets, np.concatenate(tiles).astype(np.float32),
                    tile_frames.pop())


def reported_metrics(metric: str) -> tuple:
    """The metrics OOF scores report for an experiment trained by ``metric``: lwlrap, then it."""
    return tuple(dict.fromkeys(("lwlrap", metric)))


def predict_oof(name: str, dataset: Dataset, work, *, device="cpu", batch_size: int = 64, precision: str = "fp16",
                feature_workers: int = 1, progress: bool = True, runtime: str = "torch",
                allow_unfinished: bool = False, log=print, metrics=("lwlrap",)) -> dict:
    """Predict every fold's validation clips with that fold's model; write and score them
    (``predict_fold_tiles``: missing curated log-mels are computed first; unfinished folds are
    refused unless ``allow_unfinished``).

    Returns
    -------
    dict with ``lwlrap`` (overall), ``per_fold`` and ``per_class`` scores (as written to JSON), and
    those of the other ``metrics`` (``freesound.metrics.score_predictions``)
    """
    oof = predict_fold_tiles(name, dataset, work, device=device, batch_size=batch_size, precision=precision,
                             feature_workers=feature_workers, progress=progress, runtime=runtime,
                             allow_unfinished=allow_unfinished, log=log)
    out_dir = predictions_dir(work, name)
    # oof_scores.json is written last and marks a complete set: a run killed part-way through
    # the three files leaves no marker, and the next one redoes them (``oof_is_current``).
    (out_dir / "oof_scores.json").unlink(missing_ok=True)
    save_oof_tiles(out_dir / "oof_tiles.npz", oof)
    clip_probs = oof.clip_means()
    atomic_write_csv(out_dir / "oof.csv", probability_frame(oof.fnames, clip_probs, dataset.classes), index=False)
    labels = dataset.curated.set_index("fname").loc[list(oof.fnames), "labels"]
    scores = score_predictions(multi_hot(labels, dataset.classes), clip_probs, dataset.classes, oof.folds,
                               metrics=metrics)
    atomic_write_text(out_dir / "oof_scores.json", json.dumps(scores, indent=2) + "\n")
    return scores


def oof_is_current(work, name: str) -> bool:
    """Whether ``predictions/<name>/`` holds a complete OOF set newer than every fold's weights."""
    out_dir = predictions_dir(work, name)
    files = [out_dir / f for f in ("oof_tiles.npz", "oof.csv", "oof_scores.json")]
    if not all(f.is_file() for f in files):
        return False
    weights = list(experiment_dir(work, name).glob("fold_*/model.pt"))
    return all(files[-1].stat().st_mtime >= w.stat().st_mtime for w in weights)


def ensure_oof(names, dataset: Dataset, work, *, device="cpu", log=print) -> None:
    """Predict out of fold every experiment whose OOF files are missing, incomplete or older than
    its weights (a retrained experiment)."""
    for name in names:
        if not oof_is_current(work, name):
            predict_oof(name, dataset, work, device=device, log=log)


def save_oof_tiles(path, oof: OOFTiles) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, fnames=oof.fnames, folds=oof.folds, offsets=oof.offsets, probs=oof.probs,
                 tile_frames=oof.tile_frames)


def load_oof_tiles(path) -> OOFTiles:
    path = Path(path)
    if not path.is_file():
        raise FreesoundError(f"{path} not found; run `freesound predict` on the experiment first")
    with np.load(path) as data:
        tile_frames = int(data["tile_frames"]) if "tile_frames" in data.files else OOFTiles.tile_frames
        return OOFTiles(data["fnames"], data["folds"], data["offsets"], data["probs"], tile_frames)
