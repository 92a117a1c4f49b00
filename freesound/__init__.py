__version__ = "0.1.0"

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
- ``predict``    tiled inference (``Tagger``), out-of-fold, stacking and blending
- ``cli``        the thin click layer (``freesound --help``)
"""
