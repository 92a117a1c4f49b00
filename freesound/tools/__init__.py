"""User-facing tools built on the pipeline, one module per command.

    demo.py          ``freesound demo``: the whole chain on synthetic data
    search.py        ``freesound search``: hyperparameter search by OOF lwlrap
    spaces.py        the search's default and example spaces (TOML text; ``search --help`` shows them)
    select.py        ``freesound select-ensemble``: the best subset of experiments to blend
    relabel.py       ``freesound relabel``: label-correction proposals
    self_training.py  ``freesound self-train``: rounds of pseudo-labelling unlabelled clips and
                     training a student on them, each round an experiment ``EXP_r<k>``
    distill.py       ``freesound distill``: a small student trained on a teacher's soft predictions
    evaluate.py      ``freesound evaluate``: score a submission-format CSV
    plots.py         ``freesound report``: training curves, per-class scores, augmentations
    compare.py       ``freesound compare``: experiments' CV, per-class lwlrap and curves side by side
    listen.py        ``freesound listen``: live tagging in a rolling window
    timeline.py      ``freesound tag --timeline``: a long recording tagged window by window (CSV, PNG)
    tracked_runs.py  a search's trials and ``stack``'s stackers as runs in the experiment trackers
    argus_import.py  ``freesound import-argus``: the original team's released weights
    import_weights.py  ``freesound import-weights``: a released AudioSet tagger's checkpoint (PANNs, ...)
                     as an experiment of the 527 AudioSet classes (``FORMATS``; the labels in
                     ``audioset/``)
"""
