"""Second level: ``FCNet`` stackers on the first-level experiments' out-of-fold tile probabilities.

A clip's stacker input is, for a random subset of its tiles, the mean over those tiles of the
experiments' tile probabilities concatenated (E·C values); a whole-clip experiment's one
probability per clip (``[input] whole_clip``) stands for each of the clip's tiles. Training draws subsets two ways, half
the time each: a random contiguous run of tiles, or every s-th tile from a random offset.
Validation and prediction use all tiles. At test time the stacker sees each experiment's
fold-geometric-mean clip probabilities instead (``freesound.predict.ensemble``).

Stackers reuse ``folds.csv``: fold k trains on the OOF clips of the other folds. Each fold runs
the shared loop skeleton (``freesound.training.engine.fit``) and writes its ``log.csv`` every
epoch; stackers train in seconds, so they keep no resumable state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from freesound.config import EnsembleConfig, StackerConfig
from freesound.data.dataset import Dataset, multi_hot, probability_frame
from freesound.data.folds import read_folds
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_csv, atomic_write_text
from freesound.metrics import METRICS, lwlrap, score_predictions
from freesound.models import create_model, save_checkpoint
from freesound.paths import fold_dir, predictions_dir
from freesound.predict import WindowSpec, geometric_mean, tile_layout, window_bounds
from freesound.training.engine import Hooks, fit
from freesound.training.fold_guard import check_oof_folds
from freesound.training.fold_parts import adam_with_plateau
from freesound.training.oof import OOFTiles, load_oof_tiles, reported_metrics

LOG_COLUMNS = ["epoch", "lr", "train_loss", "val_lwlrap", "seconds"]


def stacked_oof(experiments, work, folds=None) -> OOFTiles:
    """Concatenate the experiments' OOF tile probabilities along the class axis; with ``folds``
    (``folds.csv`` as ``read_folds`` gives it), each must have been predicted on those folds
    (``check_oof_folds``).

    Returns
    -------
    OOFTiles whose ``probs`` is (total tiles, E·C), clips in the first experiment's order.
    """
    paths = [predictions_dir(work, name) / "oof_tiles.npz" for name in experiments]
    tiles = [load_oof_tiles(path) for path in paths]
    if folds is not None:
        for path, oof in zip(paths, tiles):
            check_oof_folds(path, oof.fnames, oof.folds, folds, work)
    aligned = [tiles[0]] + [t.reorder(tiles[0].fnames) for t in tiles[1:]]
    # A whole-clip experiment ([input] whole_clip: one tile per clip) has the same probability
    # for every tile subset: its tile is repeated over the tiled experiments' tiles.
    tiled = [(name, oof) for name, oof in zip(experiments, aligned) if not _one_tile_per_clip(oof)]
    reference_name, reference = tiled[0] if tiled else (experiments[0], aligned[0])
    for name, oof in tiled[1:]:
        if oof.tile_frames != reference.tile_frames:
            raise FreesoundError(
                f"experiments {reference_name!r} ({reference.tile_frames}-frame tiles) and {name!r} "
                f"({oof.tile_frames}-frame tiles) cannot share a stacker: its tile subsets pair the experiments' "
                "tiles one to one, so stack experiments of one tile length")
        if not np.array_equal(oof.offsets, reference.offsets):
            raise FreesoundError(f"experiment {name!r} has other tiles per clip than {reference_name!r}")
    counts = np.diff(reference.offsets)
    probs = [oof.probs if not _one_tile_per_clip(oof) else np.repeat(oof.probs, counts, axis=0) for oof in aligned]
    return OOFTiles(reference.fnames, reference.folds, reference.offsets, np.concatenate(probs, axis=1),
                    reference.tile_frames)


def _one_tile_per_clip(oof: OOFTiles) -> bool:
    """Whether every clip has a single tile: a whole-clip experiment's predictions."""
    return bool(np.all(np.diff(oof.offsets) == 1))


def stacker_inputs(experiments, dataset: Dataset, work) -> tuple:
    """The stacked OOF tiles of ``experiments`` and their clips' (N, C) curated targets.

    Raises ``FreesoundError`` when the experiments' predictions are not over this dataset's classes,
    or were made on other folds than ``folds.csv``.
    """
    oof = stacked_oof(experiments, work, read_folds(work, dataset.curated.fname))
    if oof.probs.shape[1] != len(dataset.classes) * len(experiments):
        raise FreesoundError("the experiments' OOF predictions do not match this dataset's classes")
    labels = dataset.curated.set_index("fname").loc[list(oof.fnames), "labels"]
    return oof, multi_hot(labels, dataset.classes)


def random_tile_subset(n_tiles: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random contiguous run or a random strided subset of ``n_tiles`` tiles."""
    if rng.random() < 0.5:
        length = int(rng.integers(1, n_tiles + 1))
        start = int(rng.integers(0, n_tiles - length + 1))
        return np.arange(start, start + length)
    stride = int(rng.integers(1, min(4, n_tiles) + 1))
    return np.arange(int(rng.integers(0, stride)), n_tiles, stride)


def sample_batch(oof: OOFTiles, clips: np.ndarray, size: int, rng: np.random.Generator) -> tuple:
    """``size`` random (clip, tile subset) samples: (indices (size,), features (size, E·C))."""
    chosen = rng.choice(clips, size=size)
    features = np.stack([oof.clip(i)[random_tile_subset(oof.offsets[i + 1] - oof.offsets[i], rng)].mean(axis=0)
                         for i in chosen])
    return chosen, features.astype(np.float32)


def train_stacker_fold(stacker: StackerConfig, oof: OOFTiles, targets: np.ndarray, fold: int, out_dir: Path,
                       *, classes, device="cpu", log=print, on_epoch=None) -> tuple:
    """Train one fold's stacker; keep the best-val-lwlrap checkpoint at ``out_dir/model.pt``.

    ``on_epoch(fit_state, row)`` runs after each epoch, as in ``freesound.training.trainer.train_fold``.

    Returns
    -------
    (best val lwlrap, validation clip indices, their predictions (n, C) at the best epoch)
    """
    train_clips = np.flatnonzero(oof.folds != fold)
    valid_clips = np.flatnonzero(oof.folds == fold)
    valid_features = torch.from_numpy(oof.clip_means()[valid_clips].astype(np.float32)).to(device)  # network input
    params = {"in_channels": oof.probs.shape[1], "num_classes": targets.shape[1], "base_size": stacker.base_size,
              "reduction_scale": stacker.reduction_scale, "p_dropout": stacker.p_dropout}
    torch.manual_seed(stacker.seed + fold)
    rng = np.random.default_rng((stacker.seed, fold))
    model = create_model("fcnet", **params).to(device)
    optimizer, scheduler = adam_with_plateau(model.parameters(), stacker.lr, stacker.plateau_factor,
                                             stacker.plateau_patience)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    valid_probs = {}

    def train_one_epoch(epoch: int) -> dict:
        model.train()
        losses = []
        for _ in range(max(1, stacker.epoch_size // stacker.batch_size)):
            chosen, features = sample_batch(oof, train_clips, stacker.batch_size, rng)
            logits = model(torch.from_numpy(features).to(device))
            loss = loss_fn(logits, torch.from_numpy(targets[chosen]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return {"train_loss": float(np.mean(losses))}

    def validate() -> tuple:
        model.eval()
        with torch.inference_mode():
            valid_probs["last"] = torch.sigmoid(model(valid_features)).cpu().numpy()
        return lwlrap(targets[valid_clips], valid_probs["last"]), {}

    def save_best(epoch: int, score: float) -> None:
        valid_probs["best"] = valid_probs["last"]
        save_checkpoint(out_dir / "model.pt", model, model_name="fcnet", model_params=params,
                        classes=list(classes), audio_config={}, fold=fold, epoch=epoch, val_lwlrap=float(score))

    hooks = Hooks(train_one_epoch, validate, save_best, end_epoch=on_epoch)
    run = fit(hooks, optimizer, scheduler, max_epochs=stacker.max_epochs,
              early_stop_patience=stacker.early_stop_patience, log_path=out_dir / "log.csv", columns=LOG_COLUMNS)
    log(f"  stacker fold {fold}: best val lwlrap {run.best_score:.4f} after {run.epoch} epochs")
    return run.best_score, valid_clips, valid_probs["best"]


def train_stackers(ensemble: EnsembleConfig, dataset: Dataset, work, *, device="cpu", log=print,
                   metric: str = "lwlrap") -> dict:
    """Train every stacker of an ensemble on every fold, then score the stackers and the blend.

    Writes ``<work>/experiments/<ensemble>_<stacker>/fold_<k>/model.pt`` and, under
    ``<work>/predictions/<ensemble>/``, the stackers' OOF predictions, ``cv_scores.json`` (OOF
    lwlrap) and ``blend_scores.json``. Stackers train by val lwlrap; another ``metric`` (a name
    of ``freesound.metrics.METRICS``) scores them too, in ``cv_scores_<metric>.json`` and beside
    lwlrap in ``blend_scores.json``.

    Returns
    -------
    dict: name -> OOF ``metric`` (lwlrap by default) for every experiment, stacker and ``blend``.
    """
    if not ensemble.stackers:
        raise FreesoundError(f"ensemble {ensemble.name!r} has no stackers to train")
    oof, targets = stacker_inputs(ensemble.experiments, dataset, work)
    num_classes = len(dataset.classes)
    clip_means = oof.clip_means()
    levels = {name: clip_means[:, i * num_classes:(i + 1) * num_classes]
              for i, name in enumerate(ensemble.experiments)}
    for stacker in ensemble.stackers:
        name = ensemble.stacker_dir_name(stacker)
        log(f"{name}: training on {oof.probs.shape[1]} stacked probabilities")
        stacked = np.zeros_like(levels[ensemble.experiments[0]])
        for fold in sorted(set(oof.folds.tolist())):
            out_dir = fold_dir(work, name, fold)
            _, clips, probs = train_stacker_fold(stacker, oof, targets, fold, out_dir, classes=dataset.classes,
                                                 device=device, log=log)
            stacked[clips] = probs
        levels[name] = stacked
    out_dir = predictions_dir(work, ensemble.name)
    for name in levels:
        if name not in ensemble.experiments:
            atomic_write_csv(out_dir / f"{name}_oof.csv", probability_frame(oof.fnames, levels[name], dataset.classes),
                             index=False)
    blend = geometric_mean(np.stack(list(levels.values())))
    atomic_write_csv(out_dir / "blend_oof.csv", probability_frame(oof.fnames, blend, dataset.classes), index=False)
    levels["blend"] = blend
    cv = {name: float(lwlrap(targets, probs)) for name, probs in levels.items()}
    atomic_write_text(out_dir / "cv_scores.json", json.dumps(cv, indent=2) + "\n")
    if metric != "lwlrap":
        cv = {name: float(METRICS[metric](targets, probs)) for name, probs in levels.items()}
        atomic_write_text(out_dir / f"cv_scores_{metric}.json", json.dumps(cv, indent=2) + "\n")
    scores = score_predictions(targets, blend, dataset.classes, oof.folds, metrics=reported_metrics(metric))
    atomic_write_text(out_dir / "blend_scores.json", json.dumps(scores, indent=2) + "\n")
    return cv



def window_tiles_warning(window_tiles: int, clip_tiles: np.ndarray, experiment: str) -> str | None:
    """A sentence when a window holds more tiles than any clip the stackers learnt from (their
    inputs are means over runs of 1 up to a clip's tiles), else ``None``.

    Parameters
    ----------
    window_tiles : int, tiles of one full window
    clip_tiles : np.ndarray int (N,), tiles of each out-of-fold clip of ``experiment``
    """
    most = int(np.max(clip_tiles))
    if window_tiles <= most:
        return None
    return (f"a window holds {window_tiles} tiles of {experiment!r}, and its stackers learnt from means of at most "
            f"{most} (its longest out-of-fold clip): their window predictions go beyond what they were trained on")


def check_window_tiles(predictor, windows: WindowSpec, work) -> str | None:
    """``window_tiles_warning`` for an ensemble's first experiment, from its ``oof_tiles.npz``
    under ``work`` (``None`` when there is none, as for imported weights)."""
    name, tagger = next(iter(predictor.taggers.items()))
    path = predictions_dir(work, name) / "oof_tiles.npz"
    if not path.exists():
        return None
    config = tagger.audio_config
    frames = 2 + int(round(windows.seconds * config.sample_rate)) // config.hop_length  # one full window
    start, end, _ = window_bounds(frames, windows, config)[0]
    tiles, _, _ = tile_layout(end - start, tagger.tile_step, tagger.input_config.tile_frames)
    return window_tiles_warning(tiles, np.diff(load_oof_tiles(path).offsets), name)
