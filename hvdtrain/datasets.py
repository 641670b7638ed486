"""Small real data sets that ship with a package, for examples, templates and tests (no download)."""
from __future__ import annotations

import numpy as np

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def digits(seed: int = 0, val_fraction: float = 0.2) -> Split:
    """scikit-learn's 8x8 digits (1,797 images, 10 classes), standardized, split identically on every rank.

    Returns:
        ``((x_train, y_train), (x_val, y_val))``: float32 images flattened to 64 features,
        standardized with the training split's statistics, and int64 labels. The split is
        stratified and depends only on ``seed``, so every worker computes the same one.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_val, y_train, y_val = train_test_split(
        data.data.astype(np.float32), data.target.astype(np.int64), test_size=val_fraction, random_state=seed,
        stratify=data.target)
    mean, std = x_train.mean(0), x_train.std(0)
    std[std == 0] = 1.0  # pixels that are blank in every training image
    return ((x_train - mean) / std, y_train), ((x_val - mean) / std, y_val)
