"""Training: the network, its checkpoints, augmentation, sampling, data loading, the loop and the search.

``model`` (backbones and the paper's head, the fused features network), ``checkpoint``
(safetensors checkpoints, never pickle), ``augment`` (flips + RandAugment on uint8 crops),
``sampling`` (oversampling), ``dataload`` (block streams from crop stores, local or on Dask),
``recipes`` (the paper / cpu / finetune recipes), ``loop`` (:func:`train`, early stopping on a
smoothed validation loss) and ``search`` (the RandAugment grid search of the paper).
"""
