"""freesound: multi-label audio tagging after the Freesound Audio Tagging 2019 winners.

The library is organised top-down:

- ``audio``      decode, trim and turn a clip into a log-mel spectrogram
- ``data``       the FSDKaggle2019 dataset layout, labels and corrections files
- ``synth``      a synthetic dataset in that layout
- ``features``   the on-disk log-mel cache
- ``augment``    train-time spectrogram transforms and sample mixers
- ``models``     the model registry (``create_model``, ``load_model``)
- ``losses``, ``metrics``  noisy-label losses and lwlrap
- ``train``      the training loop
- ``predict``    tiled inference (``Tagger``); ``oof``, ``stack``, ``ensemble``: out-of-fold
                 predictions, stackers and the blend
- ``kaggle``     the kernel runtime (what ``kernel/*.py`` runs on Kaggle)
- ``cli``        the thin click layer (``freesound --help``)
"""

__version__ = "0.1.0"
