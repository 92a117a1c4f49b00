"""Search benchmark: random search against TPE with median pruning, the same number of trials.

    .venv/bin/python benchmarks/bench_search.py [--trials 16] [--epochs 6] [--seed 0]

On the demo's synthetic dataset (10 classes, 300 curated, 200 noisy clips, 3 folds), both
searches tune ``small`` on fold 0 over the default experiment space (lr, dropout, mixers and
SpecAugment probabilities), each trial trained for at most ``--epochs`` epochs. Reports, per
search, the best OOF lwlrap after every trial count, the trials pruned, the epochs trained and the
wall time. The two searches run one after the other in this process, so compare them within one
run only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import optuna  # noqa: E402

from common import REPO, header, table  # noqa: E402
from freesound.data.dataset import load_dataset  # noqa: E402
from freesound.data.features import cache_features  # noqa: E402
from freesound.data.folds import make_folds, write_folds  # noqa: E402
from freesound.data.synth import synthesize_dataset  # noqa: E402
from freesound.tools.demo import DEMO_SIZE  # noqa: E402
from freesound.tools.search import TrialSetup, load_space, load_target, run_search  # noqa: E402


def search(kind: str, setup: TrialSetup, trials: int, seed: int, out_dir: Path) -> dict:
    target = load_target("small", REPO / "experiments")
    space = load_space(None, target)
    sampler, pruner = ("random", None) if kind == "random" else ("tpe", "median")
    started = time.perf_counter()
    result = run_search(target, space, setup, trials=trials, seed=seed, name=f"bench-{kind}", sampler=sampler,
                        pruner=pruner, out=out_dir / f"{kind}-best.toml", log=lambda *_: None, progress=False)
    seconds = time.perf_counter() - started
    scores = result.trials.lwlrap.to_numpy(dtype=float)
    best_after = np.fmax.accumulate(np.where(np.isfinite(scores), scores, -np.inf))
    return {"best": result.best_score, "best_after": best_after, "seconds": seconds,
            "pruned": int((result.trials.state == "PRUNED").sum()), "epochs": int(result.trials.epochs.sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(header(f"Search: random vs TPE + median pruning, {args.trials} trials of `small` on fold 0"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthesize_dataset(root / "data", seed=0, progress=False, **DEMO_SIZE)
        dataset = load_dataset(root / "data")
        cache_features(dataset, root / "work", workers=2, progress=False)
        write_folds(root / "work", make_folds(dataset.curated.fname, n_folds=3, seed=42))
        setup = TrialSetup.create(dataset, root / "work", [0], max_epochs=args.epochs)
        results = {kind: search(kind, setup, args.trials, args.seed, root) for kind in ("random", "tpe")}
    checkpoints = sorted({min(4, args.trials), args.trials // 2, args.trials})
    rows = [[kind, *(f"{r['best_after'][n - 1]:.4f}" for n in checkpoints), r["pruned"], r["epochs"],
             f"{r['seconds'] / 60:.1f}"] for kind, r in results.items()]
    print(table(["search", *(f"best after {n}" for n in checkpoints), "pruned", "epochs trained", "minutes"],
                rows))


if __name__ == "__main__":
    main()
