"""Evaluation metrics on numpy arrays: accuracy, MSE, RMSE, ROC AUC.

Example::

    >>> import numpy as np
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
"""
import numpy as np


def _weights(sample_weight, n):
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"sample_weight has {w.size} values for {n} samples")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.sum(w) > 0:
        raise ValueError("sample_weight must be finite, >= 0 and not all zero")
    return w


def accuracy(pred, target, sample_weight=None):
    """Fraction of correct predictions (weighted by ``sample_weight`` when given).

    * ``pred`` of shape (N, C) against int labels (N,): argmax;
    * ``pred`` of shape (N,) against labels in {-1, +1}: the sign of ``pred``;
    * ``pred`` of shape (N,) against labels in {0, 1}: ``pred > 0.5`` (a probability).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    w = _weights(sample_weight, len(pred))
    if pred.ndim == 2 and pred.shape[1] == 1:      # one score per sample, kept as a column
        pred = pred[:, 0]
        target = target.reshape(len(target))
    if pred.ndim == 2 and target.ndim == 1:
        hit = np.argmax(pred, axis=1) == target
    elif pred.ndim == 2 and target.ndim == 2:          # one-hot or probability targets
        hit = np.argmax(pred, axis=1) == np.argmax(target, axis=1)
    else:
        pred, target = pred.reshape(len(pred)), target.reshape(len(target))
        if np.all((target == -1) | (target == 1)):
            hit = (pred > 0) == (target > 0)
        elif np.all((target == 0) | (target == 1)):
            hit = (pred > 0.5) == (target > 0.5)
        else:
            raise ValueError("accuracy needs class labels ({0, 1}, {-1, +1}) or integer classes")
    return float(np.average(hit, weights=w))


def mse(pred, target, sample_weight=None):
    """Mean squared error over all elements (each sample's elements weighted by ``sample_weight``)."""
    p = np.asarray(pred, dtype=np.float64)
    d = p - np.asarray(target, dtype=np.float64).reshape(np.shape(pred))
    w = _weights(sample_weight, len(p) if p.ndim else 1)
    if w is None:
        return float(np.mean(d * d))
    per_sample = (d * d).reshape(len(d), -1).mean(axis=1)
    return float(np.average(per_sample, weights=w))


def rmse(pred, target, sample_weight=None):
    """Root mean squared error over all elements (weighted as ``mse``)."""
    return float(np.sqrt(mse(pred, target, sample_weight)))


def roc_auc(score, target, sample_weight=None):
    """Area under the ROC curve of a score against binary labels (ties count one half): the
    (weighted) fraction of positive-negative pairs the score orders correctly, as scikit-learn's
    ``roc_auc_score``."""
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    target = np.asarray(target).reshape(-1) > 0
    w = _weights(sample_weight, len(score))
    w = np.ones(len(score)) if w is None else w
    if not (np.any(w[target] > 0) and np.any(w[~target] > 0)):
        raise ValueError("ROC AUC needs both positive and negative labels")
    order = np.argsort(score, kind="mergesort")
    s, pos, w = score[order], target[order], w[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]      # groups of tied scores
    wp = np.add.reduceat(np.where(pos, w, 0.0), starts)
    wn = np.add.reduceat(np.where(pos, 0.0, w), starts)
    below = np.cumsum(wn) - wn                             # negative weight scored lower
    return float(np.sum(wp * (below + 0.5 * wn)) / (np.sum(wp) * np.sum(wn)))


METRICS = {"accuracy": accuracy, "mse": mse, "rmse": rmse, "auc": roc_auc, "roc_auc": roc_auc}
