"""freesound: multi-label audio tagging after the Freesound Audio Tagging 2019 winners.

The package follows the pipeline, one folder a stage; each folder's ``__init__`` lists its modules.

    audio/        the front end: any audio file -> log-mel -> the network's input (deltas)
    data/         the FSDKaggle2019 layout, the synthetic dataset, the log-mel cache, folds
    models/       the model registry (``create_model``, ``load_model``) and checkpoints
    predict/      inference: tiles, ``Tagger``, ``EnsemblePredictor`` (local and in kernels)
    training/     the training loop (``engine.py``), the method's trainer, augmentation, losses,
                  out-of-fold evaluation
    kaggle/       the kernel runtime: what a built kernel script runs on Kaggle
    ensembling/   stackers, prediction specs, ``freesound predict``
    tools/        demo, search, ensemble selection, relabeling, evaluation, plots, listening,
                  the argus importer
    cli.py        the thin click layer (``freesound --help``)

and, below all of them: ``config`` (experiments and the front end's settings as plain data),
``paths`` (every path under ``--work``), ``metrics`` (lwlrap, ROC-AUC, cmAP), ``errors``, ``fileio`` (atomic
writes), ``processes`` (child processes that end with their parent), ``progress`` (the one
progress bar, readable in logs), ``settings`` (the one place that reads the environment) and
``versions`` (the minimum Python and dependency versions). A stage imports only the stages
listed below it; ``.importlinter`` holds that contract and the test suite checks it.
"""

__version__ = "0.1.0"
