"""Evaluation metrics on numpy arrays: accuracy, MSE, RMSE, ROC AUC.

Example::

    >>> import numpy as np
    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
"""
import numpy as np


def accuracy(pred, target):
    """Fraction of correct predictions.

    * ``pred`` of shape (N, C) against int labels (N,): argmax;
    * ``pred`` of shape (N,) against labels in {-1, +1}: the sign of ``pred``;
    * ``pred`` of shape (N,) against labels in {0, 1}: ``pred > 0.5`` (a probability).
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 2 and pred.shape[1] == 1:      # one score per sample, kept as a column
        pred = pred[:, 0]
        target = target.reshape(len(target))
    if pred.ndim == 2 and target.ndim == 1:
        return float(np.mean(np.argmax(pred, axis=1) == target))
    if pred.ndim == 2 and target.ndim == 2:          # one-hot or probability targets
        return float(np.mean(np.argmax(pred, axis=1) == np.argmax(target, axis=1)))
    pred, target = pred.reshape(len(pred)), target.reshape(len(target))
    if np.all((target == -1) | (target == 1)):
        return float(np.mean((pred > 0) == (target > 0)))
    if np.all((target == 0) | (target == 1)):
        return float(np.mean((pred > 0.5) == (target > 0.5)))
    raise ValueError("accuracy needs class labels ({0, 1}, {-1, +1}) or integer classes")


def mse(pred, target):
    """Mean squared error over all elements."""
    d = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64).reshape(np.shape(pred))
    return float(np.mean(d * d))


def rmse(pred, target):
    """Root mean squared error over all elements."""
    return float(np.sqrt(mse(pred, target)))


def roc_auc(score, target):
    """Area under the ROC curve of a score against binary labels (ties count one half)."""
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    target = np.asarray(target).reshape(-1) > 0
    n_pos, n_neg = int(target.sum()), int((~target).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC AUC needs both positive and negative labels")
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):        # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[target].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


METRICS = {"accuracy": accuracy, "mse": mse, "rmse": rmse, "auc": roc_auc, "roc_auc": roc_auc}
