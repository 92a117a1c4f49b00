"""Yardsticks the tests and benchmarks compare the library with: the plain way, no tricks."""

from __future__ import annotations

import numpy as np
import torch

from freesound.predict import geometric_mean, make_tiles


def reference_predict(models, logmel: np.ndarray, tile_step: int = 64, batch_size: int = 16) -> np.ndarray:
    """The plain way: one clip at a time, batches of 16 tiles, fp32 on the CPU.

    The yardstick ``Tagger`` is tested and benchmarked against: (C,) float32.
    """
    tiles = torch.from_numpy(make_tiles(logmel, tile_step))
    per_model = []
    with torch.no_grad():
        for model in models:
            model.eval()
            probs = torch.cat([torch.sigmoid(model(tiles[i:i + batch_size])[0]) for i in range(0, len(tiles), batch_size)])
            per_model.append(probs.mean(dim=0).numpy())
    return geometric_mean(np.stack(per_model))
