"""The vertex picker's error model: what a picker working on a z-stack of micrographs can and cannot do.

The simulator applies it to its objects (:func:`scanstream.simulate.picker.pick_features`); the
range-energy fit (:mod:`scanstream.rangeenergy`) folds the same length errors into its line shapes.

* it sees a prong when a track segment passes within ``attach_um`` of the vertex; a track that
  passes *through* the vertex (a crossing) gives two prongs, one each way;
* it follows a prong through the z-stack over ``z_window_um`` of developed depth and out to
  ``follow_um`` in the plate plane: a track leaving the field looks long; depth is read off
  the nearest focal plane (``z_step_um``) and converted with a nominal shrinkage, so a steep
  prong's length is known only to a z-step and, ending between planes, tends to look short;
* thin minimum-ionising tracks (about 28 grains per 100 um) are often missed; black tracks
  rarely; prongs shorter than ``min_length_um`` are not reported;
* two prongs closer in angle than ``merge_angle_deg`` are reported as one (overlap);
* lengths carry a relative and an absolute measurement error.

An out-of-focus object (``defocus``) is seen worse: lower detection, larger errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, LOBE, MIP, PROTON, SCRATCH


@dataclass(frozen=True)
class PickerModel:
    """Resolution and failure modes of the scanner's vertex picker (lengths in um)."""

    attach_um: float = 2.0  # a segment this close to the vertex is one of its prongs
    z_window_um: float = 30.0  # developed depth the picker follows a prong over (10 z-steps)
    z_step_um: float = 3.0  # depth is read off the focal plane where the prong ends
    follow_um: float = 80.0  # radius in the plate plane out to which a prong is followed
    shrinkage_nominal: float = 2.0  # the picker converts depth with this, not the sheet's own
    p_mip: float = 0.35  # detection probability of a thin minimum-ionising track
    p_grey: float = 0.75
    p_black: float = 0.98  # alphas, slow protons
    p_heavy: float = 0.95  # short thick fragments
    p_surface: float = 0.90  # scratches and dust lobes
    min_length_um: float = 2.5  # shorter prongs are not reported
    merge_angle_deg: float = 12.0  # overlapping prongs are reported as one
    noise_rel: float = 0.04
    noise_abs_um: float = 0.8
    defocus_detection: float = 0.7  # detection factor for objects out of focus
    defocus_noise: float = 2.0  # error factor for objects out of focus

    def p_detect(self, kinds: np.ndarray) -> np.ndarray:
        table = np.zeros(7)
        table[MIP], table[GREY] = self.p_mip, self.p_grey
        table[PROTON], table[ALPHA], table[HEAVY] = self.p_black, self.p_black, self.p_heavy
        table[SCRATCH], table[LOBE] = self.p_surface, self.p_surface
        return table[kinds]


DEFAULT_PICKER = PickerModel()
