"""The scanner's view of a simulated object: vertex multiplicity and prong lengths, as a picker reports them.

The features are computed from the object's 3-D geometry alone (no image), so a full-size sheet
takes seconds and the former method can be calibrated at the paper's scale. What the picker can
and cannot see (detection per segment kind, tracking volume, depth read off the focal planes,
merging, length errors) is :class:`scanstream.physics.picker.PickerModel`; this module applies
it to a :class:`~scanstream.simulate.objects.SimObject`.
"""

from __future__ import annotations

import numpy as np

from scanstream.physics.picker import DEFAULT_PICKER, PickerModel
from scanstream.simulate.objects import SimObject


def pick_features(obj: SimObject, rng: np.random.Generator, model: PickerModel = DEFAULT_PICKER) -> tuple[int, np.ndarray]:
    """Multiplicity and measured prong lengths of one object (:func:`pick_prongs` without the dips)."""
    mult, lengths, _ = pick_prongs(obj, rng, model)
    return mult, lengths


def pick_prongs(obj: SimObject, rng: np.random.Generator,
                model: PickerModel = DEFAULT_PICKER) -> tuple[int, np.ndarray, np.ndarray]:
    """Multiplicity, measured prong lengths and dips of one object.

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
    dips : ndarray (multiplicity,) float32
        Each prong's dip, degrees (0 in the plate plane): arcsin(depth / measured length), the
        depth read off the focal planes and converted with the nominal shrinkage, so
        ``length * sin(dip) / (shrinkage_nominal * z_step_um)`` is the whole number of planes.
    """
    mult, lengths, dips, _ = pick_prong_directions(obj, rng, model)
    return mult, lengths, dips


def pick_prong_directions(obj: SimObject, rng: np.random.Generator,
                          model: PickerModel = DEFAULT_PICKER) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`pick_prongs` and each reported prong's direction: unit (multiplicity, 3) x, y and
    depth (deeper positive), depth converted with the nominal shrinkage (what
    :mod:`scanstream.simulate.pickercal` matches to the true prongs, as the picker's errors are
    measured).

    A model with ``p_misdirect`` > 0 reports each prong's direction, with that probability, as
    an isotropic one instead (one uniform per prong, then three normals per misdirected one):
    the features do not change. A model with ``p_split`` > 0 then reports prongs twice: one
    uniform per prong (split where it is below ``p_split``), then per split prong a direction
    about 6 degrees (rms per axis) from it and a length uniform in ``split_length_um``. A model
    with ``stub_rate`` > 0 then adds stubs: one uniform per reported prong (a stub where it is
    below ``stub_rate``), then per stub an isotropic direction and a length uniform in
    ``stub_length_um``. An added prong's depth is read off the focal planes like a prong's. These
    draws come after every other, so a model without them draws exactly what it drew before.
    """
    k = len(obj.kinds)
    none = (0, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 3)))
    if k == 0:
        return none
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
        return none
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
        return none
    v_in = _followed(cs, ends, v, model)
    dz_read = _read_depth(v_in[:, 2], model)
    lengths = np.hypot(np.hypot(v_in[:, 0], v_in[:, 1]), dz_read)
    noise_f = model.defocus_noise if blurred else 1.0
    meas = lengths * (1.0 + rng.normal(0.0, model.noise_rel * noise_f, n)) + rng.normal(
        0.0, model.noise_abs_um * noise_f, n
    )
    if model.length_bias_um:
        meas = meas + model.length_bias_um
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
    kept_meas, kept_dz, kept_dirs = meas[kept], dz_read[kept], dirs[kept]
    if model.p_misdirect > 0.0 and kept:
        off = np.flatnonzero(rng.random(len(kept)) < model.p_misdirect)
        kept_dirs[off] = _isotropic(rng, len(off))
    if model.p_split > 0.0 and kept:
        kept_meas, kept_dz, kept_dirs = _add_prongs(kept_meas, kept_dz, kept_dirs, rng, model, split=True)
    if model.stub_rate > 0.0 and kept:
        kept_meas, kept_dz, kept_dirs = _add_prongs(kept_meas, kept_dz, kept_dirs, rng, model, split=False)
    sin_dip = np.clip(kept_dz / np.maximum(kept_meas, 1e-9), 0.0, 1.0)
    return (len(kept_meas), np.asarray(kept_meas, np.float32), np.degrees(np.arcsin(sin_dip)).astype(np.float32),
            kept_dirs)


def _followed(cs: np.ndarray, ends: np.ndarray, v: np.ndarray, model: PickerModel) -> np.ndarray:
    """The part (n, 3) of each prong ``v`` (from ``cs`` to ``ends``) inside the picker's tracking volume."""
    s = np.ones(len(v))
    dz = ends[:, 2] - cs[:, 2]
    zcut = (np.abs(ends[:, 2]) > model.z_window_um) & (dz != 0.0)
    s[zcut] = np.minimum(s[zcut], (np.sign(dz[zcut]) * model.z_window_um - cs[zcut, 2]) / dz[zcut])
    dxy = np.hypot(ends[:, 0] - cs[:, 0], ends[:, 1] - cs[:, 1])
    far = dxy > model.follow_um
    s[far] = np.minimum(s[far], model.follow_um / dxy[far])
    return v * np.maximum(s, 0.0)[:, None]


def _read_depth(dz_um: np.ndarray, model: PickerModel) -> np.ndarray:
    """|depth| (undeveloped um, nominal shrinkage) read off the nearest focal plane."""
    sh = model.shrinkage_nominal
    return np.floor(np.abs(dz_um) / sh / model.z_step_um + 0.5) * model.z_step_um * sh


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
    """n isotropic unit vectors (n, 3)."""
    u = rng.normal(size=(n, 3))
    return u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)


def _add_prongs(meas: np.ndarray, dz_read: np.ndarray, dirs: np.ndarray, rng: np.random.Generator,
                model: PickerModel, *, split: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reported prongs with ``model``'s split prongs or stubs added, longest first (:func:`pick_prong_directions`)."""
    which = np.flatnonzero(rng.random(len(meas)) < (model.p_split if split else model.stub_rate))
    n = len(which)
    if not n:
        return meas, dz_read, dirs
    if split:
        u = dirs[which] + rng.normal(0.0, 0.1, (n, 3))
        u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    else:
        u = _isotropic(rng, n)
    lo, hi = model.split_length_um if split else model.stub_length_um
    length = rng.uniform(lo, hi, n)
    all_meas = np.concatenate([meas, length])
    order = np.argsort(-all_meas, kind="stable")
    all_dz = np.concatenate([dz_read, np.minimum(_read_depth(length * u[:, 2], model), length)])
    return all_meas[order], all_dz[order], np.concatenate([dirs, u])[order]
