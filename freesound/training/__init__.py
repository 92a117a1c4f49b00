"""Training: the folds of an experiment, one fold's run and its parts, and the out-of-fold evaluation.

    experiment_training.py  ``train_folds``: the one entry that trains an experiment's folds (in this
                 process, under torchrun or one process per device) and scores them out of fold
    trainer.py   ``FoldRun`` / ``train_fold``: one fold's run, its steps the hooks of ``engine.fit``
    fold_parts.py  the factory of a fold's parts (data, model, optimiser, scheduler, scaler,
                 losses, on-device augment, weight average); the stacker and benchmarks use it too
    fold_options.py  the options as parts of a fold run, each with its own hooks: pretrained
                 start, process group, weight averaging, the teacher's targets
    tracking.py  the fold's runs in TensorBoard, MLflow or W&B ([tracking], train --track),
                 continued by a resumed fold, nested under a parent run; summary runs
                 (track_summary); a tracker that fails is reported once and training goes on
    resume_state.py  ``state.pt``: its format number, the upgrade of older ones, resume checks
    context.py   ``RunContext``: device, log, progress display, feature workers, process group,
                 the trackers' parent run
    engine.py    the training loop skeleton both trainers share: plateau, early stop, best
                 checkpoint, log rows, resumable state, named hooks
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
    pseudo_labels.py  the unlabelled pool pseudo-labelled by a teacher as a fold's source and mixing
                 partner ([self_training]); sharpening, the confidence floor, the scored-clip guard
    pretrained.py  a fold started from another experiment's same-fold weights ([pretrained])
    baseline.py  a logistic regression on band statistics, the yardstick
"""
