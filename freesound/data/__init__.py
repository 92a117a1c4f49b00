"""Datasets: the FSDKaggle2019 layout every command reads, and what is cached from it.

    dataset.py   the layout: label files, the class vocabulary, corrections files
    synth.py     a synthetic dataset in that layout (``freesound synth``)
    synth_like.py  a synthetic replica of the real FSDKaggle2019 metadata (``freesound synth --like``)
    features.py  the on-disk log-mel cache (``freesound features``)
    folds.py     cross-validation folds of the curated clips (``freesound make-folds``): shuffled,
                 grouped, stratified or given by the dataset, checked
    prepare.py   a labeled collection (a folder per class, a CSV, file names, a BirdCLEF
                 folder) -> the layout (``freesound prepare``)
    birdclef.py  the BirdCLEF layout read: train.csv's primary and secondary labels, the class
                 order, soundscape window row ids
    synth_soundscapes.py  a synthetic dataset in the BirdCLEF layout (``freesound synth
                 --soundscapes``), and a replica of a BirdCLEF metadata folder (``synth --like``)
"""
