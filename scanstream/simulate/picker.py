"""The scanner's view of an object: vertex multiplicity and prong lengths, as a picker reports them.

The features are computed from the object's 3-D geometry alone (no image), so a full-size sheet
takes seconds and the former method can be calibrated at the paper's scale. The model follows
what a vertex picker working on a z-stack of micrographs can and cannot do:

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

from scanstream.simulate.objects import ALPHA, GREY, HEAVY, LOBE, MIP, PROTON, SCRATCH, SimObject


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


def pick_features(obj: SimObject, rng: np.random.Generator, model: PickerModel = DEFAULT_PICKER) -> tuple[int, np.ndarray]:
    """Multiplicity and measured prong lengths of one object.

    Parameters
    ----------
    obj : SimObject
    rng : numpy Generator
        The picker's own stream (independent of rendering, so features do not depend on
        whether images are drawn).
    model : PickerModel

    Returns
    -------
    multiplicity : int
    lengths : ndarray (multiplicity,) float32
        Measured prong lengths in um (undeveloped, nominal shrinkage), longest first.
    """
    k = len(obj.kinds)
    if k == 0:
        return 0, np.zeros(0, np.float32)
    scale = np.array([1.0, 1.0, model.shrinkage_nominal])
    a, b = obj.starts, obj.ends
    pa, pb = a * scale, b * scale
    d = pb - pa
    dd = np.maximum((d * d).sum(1), 1e-12)
    t = np.clip(-(pa * d).sum(1) / dd, 0.0, 1.0)
    dist = np.linalg.norm(pa + t[:, None] * d, axis=1)
    blurred = obj.defocus != 0.0
    p_det = model.p_detect(obj.kinds) * (model.defocus_detection if blurred else 1.0)
    seen = rng.random(k) < p_det  # drawn for every segment, so the stream never depends on geometry
    att = np.flatnonzero((dist <= model.attach_um) & seen)
    if not len(att):
        return 0, np.zeros(0, np.float32)
    # every attached segment gives up to two prongs, from its closest point to either end
    c = a[att] + t[att, None] * (b[att] - a[att])
    cs = np.concatenate([c, c])
    ends = np.concatenate([b[att], a[att]])
    v = (ends - cs) * scale
    full = np.sqrt((v * v).sum(1))
    real = full >= 0.5
    cs, ends, v, full = cs[real], ends[real], v[real], full[real]
    n = len(full)
    if n == 0:
        return 0, np.zeros(0, np.float32)
    # the part of each prong inside the picker's tracking volume
    s = np.ones(n)
    dz = ends[:, 2] - cs[:, 2]
    zcut = (np.abs(ends[:, 2]) > model.z_window_um) & (dz != 0.0)
    s[zcut] = np.minimum(s[zcut], (np.sign(dz[zcut]) * model.z_window_um - cs[zcut, 2]) / dz[zcut])
    dxy = np.hypot(ends[:, 0] - cs[:, 0], ends[:, 1] - cs[:, 1])
    far = dxy > model.follow_um
    s[far] = np.minimum(s[far], model.follow_um / dxy[far])
    v_in = v * np.maximum(s, 0.0)[:, None]
    # depth read off the nearest focal plane, converted with the nominal shrinkage
    sh = model.shrinkage_nominal
    dz_read = np.floor(np.abs(v_in[:, 2]) / sh / model.z_step_um + 0.5) * model.z_step_um * sh
    lengths = np.hypot(np.hypot(v_in[:, 0], v_in[:, 1]), dz_read)
    noise_f = model.defocus_noise if blurred else 1.0
    meas = lengths * (1.0 + rng.normal(0.0, model.noise_rel * noise_f, n)) + rng.normal(
        0.0, model.noise_abs_um * noise_f, n
    )
    dirs = v / full[:, None]
    cosines = dirs @ dirs.T
    cos_merge = np.cos(np.radians(model.merge_angle_deg))
    kept: list[int] = []
    for i in np.argsort(-meas, kind="stable"):
        if meas[i] < model.min_length_um:
            continue
        if kept and cosines[i, kept].max() > cos_merge:
            continue  # overlaps a longer prong already reported
        kept.append(int(i))
    return len(kept), np.asarray(meas[kept], np.float32)
