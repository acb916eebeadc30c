"""Metrics, one definition per name, computed locally with numpy (``evaluate.load`` would fetch scripts from the Hub).

* ``accuracy``: fraction of predictions equal to the label.
* ``f1``: F1 of class 1 for two classes, macro F1 otherwise.
* ``acc_norm`` (multiple choice): accuracy when each choice's summed log-likelihood is divided by the number of
  characters of its continuation (as lm-eval / OLMo do).
"""

from __future__ import annotations

import numpy as np


def accuracy(preds, labels) -> float:
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else float("nan")


def f1(preds, labels, num_labels: int) -> float:
    """Binary F1 of class 1 for two classes, macro F1 otherwise."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = [1] if num_labels == 2 else list(range(num_labels))
    scores = []
    for c in classes:
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def classification_metrics(logits, labels, num_labels: int) -> dict:
    """``accuracy`` and ``f1`` of the argmax of ``logits``."""
    preds = np.argmax(logits, axis=-1)
    return {"accuracy": accuracy(preds, labels), "f1": f1(preds, labels, num_labels)}


def multiple_choice_metrics(loglik: dict, n_chars: dict, labels: list[int], sources: list | None = None) -> dict:
    """``accuracy`` (argmax of the summed log-likelihood of each choice), ``acc_norm`` (the same divided by the
    choice's character count) and, with several sources, ``accuracy_<source>``.

    ``loglik[(question, choice)]`` and ``n_chars[(question, choice)]`` cover every choice of every question.
    """
    n_choices: dict[int, int] = {}
    for q, c in loglik:
        n_choices[q] = max(n_choices.get(q, 0), c + 1)
    pred = [max(range(n_choices[q]), key=lambda c: loglik[(q, c)]) for q in range(len(labels))]
    pred_norm = [max(range(n_choices[q]), key=lambda c: loglik[(q, c)] / max(n_chars[(q, c)], 1))
                 for q in range(len(labels))]
    out = {"accuracy": accuracy(pred, labels), "acc_norm": accuracy(pred_norm, labels)}
    if sources and any(s is not None for s in sources) and len(set(sources)) > 1:
        for s in sorted(set(sources)):
            idx = [i for i, x in enumerate(sources) if x == s]
            out[f"accuracy_{s}"] = accuracy([pred[i] for i in idx], [labels[i] for i in idx])
    return out
