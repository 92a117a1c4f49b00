"""Build the Kaggle kernels: ``python build_kernel.py [--work data] [--experiment small] [--ensemble ensemble]``.

Writes ``kernel/kernel.py``, ``kernel/ensemble_kernel.py``, ``kernel/kernel-metadata.json`` and
``<work>/experiments/dataset-metadata.json``; see ``kernel/README.md`` for uploading them.
"""

import argparse
import sys

from freesound.errors import FreesoundError
from kernel_build import DEFAULT_DATASET_ID, build_kernels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="data", help="work folder whose experiments/ holds the weights (default: data)")
    parser.add_argument("--experiment", default="small",
                        help="experiment for kernel.py (default: small; '' to skip)")
    parser.add_argument("--ensemble", default="ensemble",
                        help="ensemble file for ensemble_kernel.py (default: ensemble; '' to skip)")
    parser.add_argument("--out", default="kernel", help="output folder (default: kernel)")
    parser.add_argument("--dataset-id", default=DEFAULT_DATASET_ID, help="owner/slug of the weights dataset on Kaggle")
    parser.add_argument("--kernel-id", default=None, help="owner/slug of the pushed kernel (default: from its title)")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="the kernels' time budget in seconds (default: 3000 on a GPU, 12600 on a CPU)")
    args = parser.parse_args(argv)
    try:
        build_kernels(args.work, experiment=args.experiment or None, ensemble=args.ensemble or None,
                      out_dir=args.out, dataset_id=args.dataset_id, kernel_id=args.kernel_id,
                      time_limit=args.time_limit)
    except FreesoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
