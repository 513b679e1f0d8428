"""The network and its checkpoint format: what training writes and inference loads.

``model`` (backbones and the paper's head, the fused features network, the preprocessing both
training and inference apply) and ``checkpoint`` (safetensors checkpoints, never pickle). Both
sit below training and inference so that neither stage imports the other for them.
"""
