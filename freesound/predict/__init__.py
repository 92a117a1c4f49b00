"""Inference: what local prediction and the Kaggle kernels run.

    tiles.py     a clip's log-mel as 256-frame tiles with deltas; the geometric mean
    tagger.py    ``Tagger``: clip probabilities from first-level models (tile mean, fold gmean)
    ensemble.py  ``EnsemblePredictor``: experiments, stackers and their blend, from a plain spec
    files.py     decoding files for prediction, with a policy for files that cannot be used; rows per window
    windows.py   windows in time: which log-mel frames a window of seconds holds, row ids
    postprocess.py  window probabilities: model combination, smoothing, rescaling by the file's max
    device.py    one tiny convolution first: can the installed torch drive this device?
    runtimes.py  CPU runtimes: torch, or the models exported to ONNX Runtime / OpenVINO (optional)
"""

from freesound.predict.ensemble import EnsemblePredictor, predict_stacker, spec_files
from freesound.predict.files import ON_ERROR, predict_file_windows, predict_files, predict_logmels_from_files
from freesound.predict.postprocess import COMBINE, combine_models, parse_weights, rescale_by_file_max, smooth_windows
from freesound.predict.tagger import PRECISIONS, Tagger
from freesound.predict.tiles import TILE, geometric_mean, make_tiles, tile_layout
from freesound.predict.windows import WindowSpec, window_bounds, window_row_ids, window_widths

__all__ = [
    "COMBINE", "ON_ERROR", "PRECISIONS", "TILE", "EnsemblePredictor", "Tagger", "WindowSpec", "combine_models",
    "geometric_mean", "make_tiles", "parse_weights", "predict_file_windows", "predict_files",
    "predict_logmels_from_files", "predict_stacker", "rescale_by_file_max", "smooth_windows", "spec_files",
    "tile_layout", "window_bounds", "window_row_ids", "window_widths",
]
