"""The linear probe: a scikit-learn head on cached features, C chosen on validation, saved as plain arrays."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from transferlab.core.atomic import write_arrays
from transferlab.probe import selection
from transferlab.settings.sections import Head

if TYPE_CHECKING:  # scikit-learn loads where a head is fitted or rebuilt, not where its weights are only read
    from sklearn.pipeline import Pipeline

SIMPLER = [("C", True)]  # among equal validation losses, the smaller C: the stronger regularisation


def chosen_C(search: pd.DataFrame) -> float:
    """The C that `fit` chose, from its search table."""
    return float(search.loc[search["chosen"], "C"].iloc[0])


def make_head(C: float, max_iter: int) -> Pipeline:
    """Standardise → multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))


def fit(train: dict[str, np.ndarray], val: dict[str, np.ndarray], head: Head) -> tuple[Pipeline, pd.DataFrame]:
    """Choose C on the validation split (`choose`), refit on train (or train+val)."""
    from sklearn.metrics import accuracy_score, log_loss

    labels = np.arange(len(train["classes"]))
    rows = []
    for C in head.C_grid:
        model = make_head(C, head.max_iter).fit(train["features"], train["labels"])
        proba = predict_proba(model, val["features"], len(labels))
        rows.append({"C": C, "train_accuracy": model.score(train["features"], train["labels"]),
                     "val_accuracy": accuracy_score(val["labels"], proba.argmax(1)),
                     "val_log_loss": log_loss(val["labels"], proba, labels=labels)})
    search = pd.DataFrame(rows)
    best = search.loc[selection.choose(search, SIMPLER)]
    X, y = train["features"], train["labels"]
    if head.refit_on == "train+val":
        X, y = np.concatenate([X, val["features"]]), np.concatenate([y, val["labels"]])
    search["chosen"] = search["C"] == best["C"]
    return make_head(float(best["C"]), head.max_iter).fit(X, y), search


def predict_proba(model: Pipeline, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all n_classes columns (a class unseen in training gets 0)."""
    proba = np.zeros((len(features), n_classes))
    proba[:, model.classes_] = model.predict_proba(features.astype(np.float64))
    return proba


def parameter_count(model: Pipeline) -> int:
    """Learned weights of the logistic regression (coefficients and intercepts)."""
    logreg = model.named_steps["logisticregression"]
    return int(logreg.coef_.size + logreg.intercept_.size)


def save(model: Pipeline, path: Path | str, class_names: list[str]) -> None:
    """Store the fitted pipeline as plain arrays (.npz): nothing executable, unlike a pickle."""
    scaler, logreg = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    write_arrays(path, {"mean": scaler.mean_, "scale": scaler.scale_, "var": scaler.var_, "coef": logreg.coef_,
                        "intercept": logreg.intercept_, "classes": logreg.classes_, "C": np.asarray(logreg.C),
                        "max_iter": np.asarray(logreg.max_iter), "class_names": np.asarray(class_names, dtype=str)})


def load(path: Path | str) -> tuple[Pipeline, list[str]]:
    """Rebuild the fitted pipeline saved by `save`; returns it and the class names."""
    with np.load(path, allow_pickle=False) as z:
        model = make_head(float(z["C"]), int(z["max_iter"]))
        scaler, logreg = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
        scaler.mean_, scaler.scale_, scaler.var_ = z["mean"], z["scale"], z["var"]
        scaler.n_features_in_ = logreg.n_features_in_ = z["mean"].shape[0]
        scaler.n_samples_seen_ = 0
        logreg.coef_, logreg.intercept_, logreg.classes_ = z["coef"], z["intercept"], z["classes"]
        return model, [str(c) for c in z["class_names"]]


def as_linear(model: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """The fitted pipeline as one linear layer (`fold`)."""
    scaler, logreg = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    return fold(logreg.coef_, logreg.intercept_, scaler.mean_, scaler.scale_)


def linear(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The head saved by `save` as one linear layer (`fold`), read without scikit-learn (the fine-tune's start)."""
    with np.load(path, allow_pickle=False) as z:
        return fold(z["coef"], z["intercept"], z["mean"], z["scale"])


def fold(coef: np.ndarray, intercept: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold the scaler into the logistic regression: logits = features @ W.T + b, one row per class.

    A binary model (one coefficient row) becomes two rows [0, w] so softmax gives its probabilities.
    """
    weight = coef / scale
    bias = intercept - weight @ mean
    if weight.shape[0] == 1:
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    return weight, bias
