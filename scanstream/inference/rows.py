"""What a cascade's image model is given besides the crops: one model's per-object inputs for a run
of rows, and the rows its prefilter keeps (:class:`scanstream.inference.engine.Ensemble`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ObjectInputs", "prepared_key"]


def prepared_key(size: int, keep: np.ndarray | None) -> tuple[int, bytes]:
    """Models with the same input size scoring the same rows share one preprocessed batch."""
    return size, b"" if keep is None else np.packbits(keep).tobytes()


@dataclass(frozen=True)
class ObjectInputs:
    """One model's per-object inputs for a run of rows.

    ``inputs`` float32 (n, k) (:func:`scanstream.picker.learned.model_inputs`), ``logits``
    float32 (n,) the feature model's logits, ``prefilter`` the cascade threshold or None.
    """

    inputs: np.ndarray
    logits: np.ndarray
    prefilter: float | None

    def rows(self, a: int, b: int) -> ObjectInputs:
        return ObjectInputs(self.inputs[a:b], self.logits[a:b], self.prefilter)

    def kept(self) -> np.ndarray | None:
        """The rows a cascade's prefilter passes to the image model (None: no prefilter, every row)."""
        return None if self.prefilter is None else self.logits >= self.prefilter
