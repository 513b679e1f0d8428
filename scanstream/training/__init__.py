"""Training: the network, its checkpoints, augmentation, sampling, data loading, the loop and the search.

``config`` (:class:`~scanstream.training.config.TrainConfig` and
:class:`~scanstream.training.config.SearchConfig`, the options with their help; no torch, so
the CLI reads them at start-up), ``model`` (backbones and the paper's head, the fused features
network), ``checkpoint`` (safetensors checkpoints, never pickle), ``augment`` (flips +
RandAugment on uint8 crops), ``sampling`` (oversampling), ``dataload`` (block streams from crop
stores, local or on Dask), ``recipes`` (the paper / cpu / finetune recipes), ``run`` (a run's
checked inputs, runtime and shared state), ``loop`` (:func:`train`, early stopping on a smoothed
validation loss), ``outputs`` (the run directory's files) and ``search`` (the RandAugment grid
search of the paper).
"""
