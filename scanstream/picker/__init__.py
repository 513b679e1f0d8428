"""The former method: the Vertex Picker's features, the cuts on them, and a learned model on them.

``features`` (the picker's measurements as numbers per object), ``cuts`` (the cut-based
selection the paper compares against) and ``learned`` (gradient-boosted trees on the same
features, stored as safetensors arrays: the learned former method and the cascade prefilter).
"""
