"""Inference: what local prediction and the Kaggle kernels run.

    tiles.py     a clip's log-mel as 256-frame tiles with deltas; the geometric mean
    tagger.py    ``Tagger``: clip probabilities from first-level models (tile mean, fold gmean)
    ensemble.py  ``EnsemblePredictor``: experiments, stackers and their blend, from a plain spec
    files.py     decoding files for prediction, with a policy for files that cannot be used
    device.py    one tiny convolution first: can the installed torch drive this device?
    runtimes.py  CPU runtimes: torch, or the models exported to ONNX Runtime / OpenVINO (optional)
"""

from freesound.predict.ensemble import EnsemblePredictor, predict_stacker, spec_files
from freesound.predict.files import ON_ERROR, predict_files, predict_logmels_from_files
from freesound.predict.tagger import PRECISIONS, Tagger
from freesound.predict.tiles import TILE, geometric_mean, make_tiles, tile_layout

__all__ = [
    "ON_ERROR", "PRECISIONS", "TILE", "EnsemblePredictor", "Tagger", "geometric_mean", "make_tiles", "predict_files",
    "predict_logmels_from_files", "predict_stacker", "spec_files", "tile_layout",
]
