"""Training: augmentation, sampling, data loading, the loop and the search.

The network and its checkpoint format live in :mod:`scanstream.network` (inference loads them
too). ``config`` (:class:`~scanstream.training.config.TrainConfig` and
:class:`~scanstream.training.config.SearchConfig`, the options with their help; no torch, so
the CLI reads them at start-up), ``augment`` (flips + RandAugment on uint8 crops), ``sampling``
(oversampling), ``dataload`` (block streams from crop stores, local or on Dask), ``recipes`` (the paper / cpu / finetune recipes), ``run`` (a run's
checked inputs, runtime and shared state), ``loop`` (:func:`train`, early stopping on a smoothed
validation loss), ``outputs`` (the run directory's files) and ``search`` (the RandAugment grid
search of the paper).
"""
