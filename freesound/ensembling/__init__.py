"""Ensembling: trained experiments combined into one prediction.

    specs.py        resolved configs to prediction specs and taggers (what ``predict`` and the
                    kernels load)
    stack.py        the FCNet stacker trained on out-of-fold tile probabilities, and the blend's CV
    predictions.py  ``freesound predict``: an experiment or ensemble on a test set or a folder
"""
