"""Training: one fold of one experiment, and its out-of-fold evaluation.

    engine.py    the training loop skeleton both trainers share: plateau, early stop, best
                 checkpoint, log rows, resumable state, named hooks
    trainer.py   ``train_fold`` / ``train_experiment``: the method's first-level training
    distributed.py  one fold trained by the processes of a torchrun job (DDP), and its
                 one-process case
    fold_devices.py  folds in parallel, one process per device (``train --devices``)
    fold_guard.py  a fold's training lock, its unfinished marker, and the check that its weights
                 and state held out the clips folds.csv holds out
    device_augment.py  SpecAugment, deltas and mixing on a batch on the training device
    sampling.py  the per-epoch sampler over curated / corrected-noisy / noisy clips
    augment.py   train-time spectrogram transforms (crop, resized crop, frequency warp, SpecAugment)
    averaging.py SWA and EMA of the weights: the averaged model validated and kept
    mixers.py    sample mixers (sigmoid-concat, additive, SpecMix)
    losses.py    BCE, L_soft, L_q, LSEP, the auxiliary-head weighting and the noisy-head split
    oof.py       out-of-fold prediction and scores of a trained experiment
    teacher.py   soft targets from an earlier experiment's or ensemble's predictions ([targets])
    pretrained.py  a fold started from another experiment's same-fold weights ([pretrained])
    baseline.py  a logistic regression on band statistics, the yardstick
"""
