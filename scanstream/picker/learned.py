"""The learned former method: boosted trees on the picker's features, stored without pickle.

The former method (:mod:`scanstream.picker.cuts`) cuts on multiplicity and prong lengths. The same
ten numbers per object (:mod:`scanstream.picker.features`) carry more than two cuts use: which prong
lengths fall on the alpha lines, how many long tracks leave the vertex. A gradient-boosted tree
ensemble (scikit-learn's :class:`~sklearn.ensemble.HistGradientBoostingClassifier`) learns that
from TRAIN's labelled objects in about a second and scores millions of objects a minute.

It serves three roles:

* a second baseline beside the cuts in every report (``scanstream baseline --learned``);
* the prefilter of a cascade: objects whose feature logit is below a threshold calibrated at
  a stated recall are never shown to the image network (:mod:`scanstream.inference.engine`);
* one input of the fused image + feature network (its logit, :func:`model_inputs`).

Storage: scikit-learn's own persistence is pickle, which scanstream never loads. The fitted
trees are flattened into arrays (:class:`FeatureModel`) and written as safetensors tensors with
JSON metadata; prediction is a vectorised walk of those arrays in numpy, tested equal to
scikit-learn's ``decision_function``. The same tensors can live inside an image checkpoint
(prefix ``prefilter.``) so that a cascade is one file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scanstream.atomic import atomic_path
from scanstream.errors import CheckpointError, InputError, TrainingError
from scanstream.metrics import operating_point_at_recall
from scanstream.picker.features import FEATURE_NAMES, FEATURE_SCALE, N_FEATURES, feature_array

FORMAT_VERSION = 1
METADATA_KEY = "scanstream_feature_model"
TENSOR_NAMES = ("feature", "threshold", "left", "right", "is_leaf", "value", "roots", "baseline")
#: Prefix of a feature model's tensors inside a fused network's checkpoint.
EMBEDDED_PREFIX = "prefilter."
#: Divides the feature model's logit where the fused network reads it (inputs of order 1).
LOGIT_SCALE = 10.0
#: The fused network reads the feature model's logit clipped to +-LOGIT_CLIP (then / LOGIT_SCALE):
#: a logit beyond it says no more about the object, and an input far outside the range the
#: network was trained on would be extrapolated without bound.
LOGIT_CLIP = 15.0
#: Default l2 regularisation of the tree ensemble's leaves (:func:`fit_feature_model`).
L2_REGULARIZATION = 1.0
#: Inputs of the fused network per object: the scaled features plus the feature model's logit.
N_MODEL_INPUTS = N_FEATURES + 1
_ROWS_PER_BLOCK = 8192


@dataclass(frozen=True)
class FeatureModel:
    """A fitted tree ensemble as flat arrays (all trees' nodes concatenated).

    Attributes
    ----------
    feature : int32 (nodes,)
        Feature index a split node tests (unused at leaves).
    threshold : float64 (nodes,)
        A row goes left when ``x[feature] <= threshold``.
    left, right : int32 (nodes,)
        Absolute node index of the children (unused at leaves).
    is_leaf : bool (nodes,)
    value : float64 (nodes,)
        Leaf contribution to the logit (learning rate already applied).
    roots : int32 (trees,)
        Root node of each tree.
    baseline : float
        The ensemble's constant logit.
    info : dict
        JSON metadata: features, training data, parameters, metrics.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray
    roots: np.ndarray
    baseline: float
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Logits of the rows of ``x``: float (n, :data:`N_FEATURES`) -> float32 (n,)."""
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != N_FEATURES:
            raise InputError(f"feature model expects an (n, {N_FEATURES}) array, got shape {x.shape}")
        out = np.empty(len(x), np.float32)
        for a in range(0, len(x), _ROWS_PER_BLOCK):
            out[a : a + _ROWS_PER_BLOCK] = self._logits(x[a : a + _ROWS_PER_BLOCK])
        return out

    def _logits(self, x: np.ndarray) -> np.ndarray:
        idx = np.broadcast_to(self.roots, (len(x), self.n_trees)).copy()
        rows = np.arange(len(x))[:, None]
        while True:
            inner = ~self.is_leaf[idx]
            if not inner.any():
                break
            go_left = x[rows, self.feature[idx]] <= self.threshold[idx]
            idx = np.where(inner, np.where(go_left, self.left[idx], self.right[idx]), idx)
        return self.baseline + self.value[idx].sum(axis=1)

    def score_table(self, table: pa.Table, *, source: str = "object table") -> np.ndarray:
        """Logits of every row of an object table (InputError if it lacks the features)."""
        return self.decision_function(feature_array(table, source=source))

    def tensors(self, prefix: str = "") -> dict[str, Any]:
        """The arrays as torch tensors under ``prefix`` (inside an image checkpoint)."""
        import torch

        return {prefix + k: torch.from_numpy(v) for k, v in self.arrays().items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays in their stored dtypes (safetensors has no int64 need here; int32 indices)."""
        arrays = {
            "feature": self.feature.astype(np.int32),
            "threshold": self.threshold.astype(np.float64),
            "left": self.left.astype(np.int32),
            "right": self.right.astype(np.int32),
            "is_leaf": self.is_leaf.astype(np.uint8),
            "value": self.value.astype(np.float64),
            "roots": self.roots.astype(np.int32),
            "baseline": np.array([self.baseline], np.float64),
        }
        return {k: np.ascontiguousarray(v) for k, v in arrays.items()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Any], info: dict[str, Any], *, prefix: str = "", source: str = "feature model") -> FeatureModel:
        """Rebuild from :meth:`tensors` output (numpy or torch values); checks the structure."""
        try:
            a = {k: np.asarray(tensors[prefix + k]) for k in TENSOR_NAMES}
        except KeyError as exc:
            raise CheckpointError(f"{source}: feature model tensor {exc.args[0]!r} missing") from None
        n = len(a["feature"])
        if any(len(a[k]) != n for k in ("threshold", "left", "right", "is_leaf", "value")) or a["baseline"].shape != (1,):
            raise CheckpointError(f"{source}: feature model arrays have inconsistent lengths")
        inner = a["is_leaf"] == 0
        for k in ("left", "right"):
            if inner.any() and (a[k][inner].min() < 0 or a[k][inner].max() >= n):
                raise CheckpointError(f"{source}: feature model child index out of range")
        if len(a["roots"]) and (a["roots"].min() < 0 or a["roots"].max() >= n):
            raise CheckpointError(f"{source}: feature model root index out of range")
        if inner.any() and (a["feature"][inner].min() < 0 or a["feature"][inner].max() >= N_FEATURES):
            raise CheckpointError(f"{source}: feature model tests a feature outside 0..{N_FEATURES - 1}")
        return cls(
            feature=a["feature"].astype(np.int64),
            threshold=a["threshold"].astype(np.float64),
            left=a["left"].astype(np.int64),
            right=a["right"].astype(np.int64),
            is_leaf=a["is_leaf"].astype(bool),
            value=a["value"].astype(np.float64),
            roots=a["roots"].astype(np.int64),
            baseline=float(a["baseline"][0]),
            info=dict(info),
        )


#: The fields of scikit-learn's tree node records that :func:`from_sklearn` reads.
NODE_FIELDS = ("feature_idx", "num_threshold", "left", "right", "is_leaf", "value", "is_categorical")


def sklearn_trees(estimator: Any) -> tuple[list[np.ndarray], float]:
    """The node records of every tree and the baseline logit of a fitted binary ensemble.

    scikit-learn has no public accessor for a :class:`~sklearn.ensemble.HistGradientBoostingClassifier`'s
    trees, so they are read from its private ``_predictors`` (one list of one ``TreePredictor``
    per iteration, its ``nodes`` a structured array) and ``_baseline_prediction`` (one value);
    skl2onnx's converter reads the same attributes. pyproject.toml caps scikit-learn at the
    releases where these were checked; any other shape is refused here, naming the release,
    rather than read wrong.

    Raises
    ------
    InputError
        Not a fitted binary classifier.
    TrainingError
        The private attributes are missing or shaped otherwise than this module reads them.
    """
    predictors = getattr(estimator, "_predictors", None)
    if predictors is None or len(getattr(estimator, "classes_", ())) != 2:
        raise InputError("expected a fitted binary HistGradientBoostingClassifier")
    import sklearn

    where = (f"scikit-learn {sklearn.__version__}: HistGradientBoostingClassifier's private tree arrays "
             f"are not as scanstream.picker.learned reads them")
    trees = []
    for i, per_class in enumerate(predictors):
        nodes = getattr(per_class[0], "nodes", None) if len(per_class) == 1 else None
        names = getattr(getattr(nodes, "dtype", None), "names", None) or ()
        missing = [f for f in NODE_FIELDS if f not in names]
        if nodes is None or nodes.ndim != 1 or missing:
            raise TrainingError(f"{where} (_predictors[{i}]: "
                                + (f"no node fields {missing})" if nodes is not None else "not one tree with .nodes)"))
        trees.append(nodes)
    baseline = np.ravel(np.asarray(getattr(estimator, "_baseline_prediction", np.zeros(0)), dtype=np.float64))
    if baseline.size != 1:
        raise TrainingError(f"{where} (_baseline_prediction has {baseline.size} values, expected 1)")
    return trees, float(baseline[0])


def from_sklearn(estimator: Any, info: dict[str, Any] | None = None) -> FeatureModel:
    """Flatten a fitted binary :class:`~sklearn.ensemble.HistGradientBoostingClassifier` (:func:`sklearn_trees`)."""
    trees, baseline = sklearn_trees(estimator)
    feature, threshold, left, right, is_leaf, value, roots = [], [], [], [], [], [], []
    offset = 0
    for nodes in trees:
        if nodes["is_categorical"].any():
            raise InputError("categorical splits are not supported in stored feature models")
        roots.append(offset)
        feature.append(nodes["feature_idx"])
        threshold.append(nodes["num_threshold"])
        left.append(nodes["left"].astype(np.int64) + offset)
        right.append(nodes["right"].astype(np.int64) + offset)
        is_leaf.append(nodes["is_leaf"].astype(bool))
        value.append(nodes["value"])
        offset += len(nodes)
    return FeatureModel(
        feature=np.concatenate(feature).astype(np.int64),
        threshold=np.concatenate(threshold).astype(np.float64),
        left=np.concatenate(left),
        right=np.concatenate(right),
        is_leaf=np.concatenate(is_leaf),
        value=np.concatenate(value).astype(np.float64),
        roots=np.asarray(roots, np.int64),
        baseline=baseline,
        info=dict(info or {}),
    )


def labelled_features(table: pa.Table, *, source: str = "object table") -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of the rows labelled 0 or 1 (InputError without both classes)."""
    if "label" not in table.column_names:
        raise InputError(f"{source}: no 'label' column: a feature model trains on labelled objects")
    y = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    bad = ~np.isin(y, (-1, 0, 1))
    if bad.any():
        raise InputError(f"{source}: label {y[bad][0]!r} is not 1, 0 or -1")
    keep = y >= 0
    x = feature_array(table, source=source)[keep]
    y = y[keep].astype(np.int64)
    if (y == 1).sum() < 5 or (y == 0).sum() < 5:
        raise InputError(f"{source}: needs at least 5 alpha decays and 5 others labelled, has {(y == 1).sum()} and {(y == 0).sum()}")
    return x, y


def fit_feature_model(
    table: pa.Table, *, seed: int = 0, max_iter: int = 300, l2_regularization: float = L2_REGULARIZATION, source: str = "TRAIN"
) -> FeatureModel:
    """Fit the tree ensemble on a labelled object table's picker features.

    scikit-learn's defaults otherwise (learning rate 0.1, 31 leaves, early stopping on a 10 %
    validation split when there are more than 10,000 rows), with class weights left equal: the
    logit is that of TRAIN's prevalence, and only its ranking matters downstream.

    ``l2_regularization`` (scikit-learn's default is 0) bounds each leaf's Newton step
    -G / (H + l2). Without it, a leaf holding a few objects of one class whose predicted
    probability is already near 0 or 1 has a vanishing hessian and a huge value: fitted on
    180,000 objects of six sheets, the unregularised ensemble had leaves from -2,851 to +362
    and gave a hadron interaction a logit of +300 (rank 1 of a 3,000-object sheet, above every
    alpha decay). With 1.0 the leaves stay within about +-1 and the validation AP is unchanged
    (0.952 against 0.954 on a sheet of 20,000 objects).
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = labelled_features(table, source=source)
    est = HistGradientBoostingClassifier(max_iter=max_iter, random_state=seed, l2_regularization=l2_regularization)
    est.fit(x, y)
    info = {
        "features": list(FEATURE_NAMES),
        "estimator": "sklearn.ensemble.HistGradientBoostingClassifier",
        "params": {"max_iter": max_iter, "random_state": seed, "l2_regularization": l2_regularization,
                   "n_iter": int(est.n_iter_)},
        "train": {"objects": len(y), "alpha": int((y == 1).sum()), "source": source},
    }
    return from_sklearn(est, info)


def save_feature_model(model: FeatureModel, path: str | os.PathLike) -> Path:
    """Write ``model`` as a safetensors file (atomically; metadata as JSON, never pickle)."""
    from safetensors.numpy import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise InputError(f"{p}: a feature model file name must end in .safetensors")
    meta = {METADATA_KEY: json.dumps({"version": FORMAT_VERSION, **model.info}, sort_keys=True)}
    with atomic_path(p) as tmp:
        save_file(model.arrays(), str(tmp), metadata=meta)
    return p


def load_feature_model(path: str | os.PathLike) -> FeatureModel:
    """Read a file written by :func:`save_feature_model`, or the feature model inside a fused
    network's checkpoint (fine-tuning reuses it); CheckpointError for anything else."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such feature model file")
    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p}: not a safetensors feature model: {exc}") from None
    raw = meta.get(METADATA_KEY)
    if raw is None:
        embedded = _embedded_info(meta)
        if embedded is not None:  # a fused network's checkpoint carries its feature model
            return FeatureModel.from_tensors(tensors, embedded, prefix=EMBEDDED_PREFIX, source=str(p))
        raise CheckpointError(f"{p}: a safetensors file but not a scanstream feature model (no '{METADATA_KEY}' metadata)")
    try:
        info = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{p}: feature model metadata is not valid JSON") from None
    if not isinstance(info, dict) or info.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{p}: unsupported feature model version {info.get('version') if isinstance(info, dict) else info!r}")
    return FeatureModel.from_tensors(tensors, info, source=str(p))


def _embedded_info(meta: dict[str, str]) -> dict[str, Any] | None:
    """The feature model metadata inside a fused network's checkpoint header, or None."""
    try:
        ck = json.loads(meta.get("scanstream", "null"))
    except ValueError:
        return None
    info = ck.get("feature_model") if isinstance(ck, dict) else None
    return info if isinstance(info, dict) else None


def model_inputs(table: pa.Table, model: FeatureModel, *, source: str = "object table") -> np.ndarray:
    """What the fused network reads per object: float32 (n, :data:`N_MODEL_INPUTS`).

    The scaled picker features (:data:`scanstream.picker.features.FEATURE_SCALE`) and the feature
    model's logit clipped to +-:data:`LOGIT_CLIP` and divided by :data:`LOGIT_SCALE`; training
    and inference share this function.
    """
    return inputs_and_logits(table, model, source=source)[0]


def inputs_and_logits(table: pa.Table, model: FeatureModel, *, source: str = "object table") -> tuple[np.ndarray, np.ndarray]:
    """:func:`model_inputs` and the feature model's unclipped logits float32 (n,), in one pass."""
    x = feature_array(table, source=source)
    logit = model.decision_function(x)
    clipped = np.clip(logit, -LOGIT_CLIP, LOGIT_CLIP)
    return np.concatenate([x / FEATURE_SCALE, (clipped / LOGIT_SCALE)[:, None]], axis=1).astype(np.float32), logit


def calibrate_prefilter(model: FeatureModel, table: pa.Table, *, recall: float, source: str = "calibration table") -> FeatureModel:
    """The model with a cascade prefilter threshold at ``recall`` on a labelled table.

    The threshold is the highest logit that keeps ``ceil(recall * alpha)`` of the table's alpha
    decays (:func:`scanstream.metrics.operating_point_at_recall`); calibrate on objects the
    model was not fitted on, or the recall it keeps elsewhere will be lower than stated.
    Returns a new :class:`FeatureModel` whose ``info["prefilter"]`` records the threshold, the
    target, and what it kept on the calibration table.
    """
    x, y = labelled_features(table, source=source)
    logits = model.decision_function(x)
    op = operating_point_at_recall(y, logits, recall)
    prefilter = {
        "threshold": float(op.threshold), "recall": float(recall), "calibrated_on": source,
        "objects": len(y), "alpha": int((y == 1).sum()), "kept": int(op.selected),
        "kept_alpha": int(op.true_positives),
    }
    return FeatureModel(**{**model.__dict__, "info": {**model.info, "prefilter": prefilter}})


def prefilter_threshold(model: FeatureModel) -> float | None:
    """The calibrated prefilter threshold of a feature model, or None."""
    pre = model.info.get("prefilter")
    return None if not isinstance(pre, dict) else float(pre["threshold"])


def prefilter_accounting(model: FeatureModel, table: pa.Table, threshold: float, *, source: str = "object table") -> dict[str, Any]:
    """What a cascade's prefilter does to a labelled table: objects passed on, recall given up.

    Returns
    -------
    dict
        ``objects``, ``passed`` (feature logit >= ``threshold``: scored by the network),
        ``alpha``, ``alpha_rejected`` (alpha decays the network never sees: the cascade cannot
        select them at any threshold), ``recall_lost`` = alpha_rejected / alpha.
    """
    if "label" not in table.column_names:
        raise InputError(f"{source}: no 'label' column: prefilter accounting needs labelled objects")
    y = np.asarray(table.column("label").to_numpy(zero_copy_only=False))
    passed = model.score_table(table, source=source) >= threshold
    alpha = y == 1
    rejected = int((alpha & ~passed).sum())
    return {
        "objects": len(y), "passed": int(passed.sum()), "alpha": int(alpha.sum()), "alpha_rejected": rejected,
        "recall_lost": rejected / int(alpha.sum()) if alpha.any() else 0.0,
    }
