"""Sample weights for training and metrics: ``sample_weight`` and ``class_weight`` made one array.

``fit(..., sample_weight=w, class_weight="balanced")`` trains on the weighted loss
``sum_s w_s * loss_s / sum_s w_s`` (full batch; a minibatch's loss is ``sum w l / n`` with the weights
scaled to mean 1 over the training set). ``class_weight`` follows scikit-learn: a dict
``{label: weight}``, or ``"balanced"`` for ``n_samples / (n_classes * count(label))``.

Example::

    >>> import numpy as np
    >>> combined_weights(5, None, "balanced", np.array([0, 0, 0, 1, 1]))
    array([0.83333333, 0.83333333, 0.83333333, 1.25      , 1.25      ])
"""
import numpy as np


def class_labels(y, what="the target"):
    """The class label of each sample of ``y``: an integer class (N,) or (N, 1), labels in {0, 1}
    or {-1, +1} as floats, or one-hot rows (N, C) (their argmax)."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if y.dtype.kind == "f" and not (np.all((y == 0) | (y == 1)) and np.all(y.sum(1) == 1)):
            raise ValueError(f"class_weight needs class labels, but {what} holds rows that are not one-hot")
        return np.argmax(y, axis=1)
    if y.ndim != 1:
        raise ValueError(f"class_weight needs one class label per sample, but {what} has shape {y.shape}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"class_weight needs class labels, but {what} holds values that are not whole "
                             "numbers (a regression target?)")
        y = y.astype(np.int64)
    return y


def combined_weights(n, sample_weight=None, class_weight=None, labels=None, what="sample_weight"):
    """One weight per sample: ``sample_weight`` (None for ones) times the class weight of each
    sample's label; None when both are None. Checked: shape (n,), finite, >= 0, not all zero; the
    weights of a ``class_weight`` dict finite and >= 0 (a label it does not name weighs 1)."""
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n)
    if sample_weight is not None:
        try:
            sw = np.asarray(sample_weight, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be an array of numbers, one per sample") from None
        if sw.shape != (n,):
            raise ValueError(f"{what} has shape {sw.shape}; it needs one value per sample, ({n},)")
        if not np.all(np.isfinite(sw)) or np.any(sw < 0):
            raise ValueError(f"{what} must be finite and >= 0")
        w = w * sw
    if class_weight is not None:
        y = class_labels(labels)
        classes, counts = np.unique(y, return_counts=True)
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ValueError(f"class_weight must be a dict or 'balanced', not {class_weight!r}")
            table = {c: n / (len(classes) * k) for c, k in zip(classes.tolist(), counts.tolist())}
        elif isinstance(class_weight, dict):
            table = {}
            for c, v in class_weight.items():
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                        or not np.isfinite(v) or v < 0:
                    raise ValueError(f"class_weight[{c!r}] must be a finite number >= 0, not {v!r}")
                table[c] = float(v)
        else:
            raise ValueError(f"class_weight must be a dict or 'balanced', not {type(class_weight).__name__}")
        w = w * np.array([table.get(c, 1.0) for c in y.tolist()])
    if not np.any(w > 0):
        raise ValueError(f"every sample has weight 0 ({what} and class_weight): nothing to train on")
    return w
