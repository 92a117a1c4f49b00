"""Relabeling proposals from a trained experiment, in the corrections format, for review.

- Curated clips are ranked by their out-of-fold label-ranking precision, lowest first: the clips
  the model disagrees with most. Those below ``curated_below`` get a proposal: the classes
  predicted with probability >= 0.5 (the top class when none is).
- Noisy clips are ranked by the experiment's mean probability of their given labels, highest
  first. Those at or above ``promote_at`` are proposed as trusted (their given labels kept), the
  "corrected noisy" set; those whose every given label scores below ``remove_below`` are
  proposed for removal.

Nothing is applied: the proposals are written for a person to review, and an experiment uses
reviewed files through its ``[data] corrections`` / ``noisy_corrections`` keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from freesound.data.dataset import Dataset, multi_hot, write_corrections
from freesound.data.folds import read_folds
from freesound.ensembling.specs import trained_tagger
from freesound.fileio import atomic_write_csv
from freesound.metrics import per_clip_lrap
from freesound.paths import predictions_dir
from freesound.training.fold_guard import check_oof_folds
from freesound.training.oof import load_oof_tiles
from freesound.training.teacher import predict_noisy


@dataclass(frozen=True)
class RelabelResult:
    curated_proposals: dict
    noisy_proposals: dict
    review: pd.DataFrame
    paths: dict


def predicted_labels(probs: np.ndarray, classes) -> tuple:
    """Classes with probability >= 0.5, most probable first; the top class when none is."""
    order = np.argsort(-probs)
    chosen = [i for i in order if probs[i] >= 0.5] or [order[0]]
    return tuple(classes[i] for i in chosen)


def propose_relabels(name: str, dataset: Dataset, work, *, device="cpu", curated_below: float = 0.5,
                     promote_at: float = 0.8, remove_below: float = 0.05, progress: bool = True) -> RelabelResult:
    """Rank curated and noisy clips with experiment ``name`` and write proposals.

    Writes ``relabel_curated.json``, ``relabel_noisy.json`` (corrections format) and
    ``relabel_review.csv`` under ``<work>/predictions/<name>/``. The noisy clips are predicted by
    ``freesound.training.teacher.predict_noisy`` (missing log-mels computed first, a chunk read at
    a time, a progress bar unless ``progress`` is False), as soft pseudo-labels are. OOF
    predictions made on other folds than ``folds.csv`` are refused (``check_oof_folds``).
    """
    classes = list(dataset.classes)
    out_dir = predictions_dir(work, name)
    oof = load_oof_tiles(out_dir / "oof_tiles.npz")
    check_oof_folds(out_dir / "oof_tiles.npz", oof.fnames, oof.folds, read_folds(work, dataset.curated.fname), work)
    oof_probs = oof.clip_means()
    given = dataset.curated.set_index("fname").loc[list(oof.fnames), "labels"]
    curated_scores = per_clip_lrap(multi_hot(given, classes), oof_probs)

    tagger = trained_tagger(work, name, device=device)
    noisy_probs = predict_noisy(tagger, dataset, work, progress=progress, desc="relabel: noisy clips")
    noisy_target = multi_hot(dataset.noisy.labels, classes)
    noisy_scores = (noisy_probs * noisy_target).sum(axis=1) / noisy_target.sum(axis=1)
    noisy_best = (noisy_probs * noisy_target).max(axis=1)

    rows, curated_proposals, noisy_proposals = [], {}, {}
    for fname, labels, score, probs in zip(oof.fnames, given, curated_scores, oof_probs):
        predicted = predicted_labels(probs, classes)
        proposal = predicted if score < curated_below and set(predicted) != set(labels) else None
        if proposal:
            curated_proposals[fname] = proposal
        rows.append(("train_curated", fname, score, ",".join(labels), ",".join(predicted),
                     ",".join(proposal) if proposal else ""))
    for fname, labels, score, best, probs in zip(dataset.noisy.fname, dataset.noisy.labels, noisy_scores,
                                                  noisy_best, noisy_probs):
        proposal = labels if score >= promote_at else (None if best < remove_below else ())
        if proposal != ():
            noisy_proposals[fname] = proposal
        rows.append(("train_noisy", fname, score, ",".join(labels), ",".join(predicted_labels(probs, classes)),
                     "remove" if proposal is None else ",".join(proposal)))
    review = pd.DataFrame(rows, columns=["split", "fname", "score", "given", "predicted", "proposal"])
    review = pd.concat([
        review[review.split == "train_curated"].sort_values("score", kind="stable"),
        review[review.split == "train_noisy"].sort_values("score", ascending=False, kind="stable"),
    ])
    paths = {"curated": out_dir / "relabel_curated.json", "noisy": out_dir / "relabel_noisy.json",
             "review": out_dir / "relabel_review.csv"}
    write_corrections(paths["curated"], curated_proposals)
    write_corrections(paths["noisy"], noisy_proposals)
    atomic_write_csv(paths["review"], review)
    return RelabelResult(curated_proposals, noisy_proposals, review, paths)
