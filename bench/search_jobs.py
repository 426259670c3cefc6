"""The training job of bench/bench_search.py, one function for both systems.

A one-hidden-layer MLPClassifier (scikit-learn, solver sgd with momentum) on
scikit-learn's digits (8x8 images, 1,257 training and 540 validation examples,
a fixed stratified split), trained with partial_fit one epoch at a time for up
to ``epochs`` epochs, reporting the validation accuracy after each.  One BLAS
thread, random_state 0: a configuration always gives the same curve.

An epoch computes for 5-30 ms here; each is padded with a sleep to
``epoch_s`` seconds from its start (identically under labq and Ray Tune), so
that early stopping, which labq applies from curves it reads every 0.5 s, can
act between epochs as it would on a real training job.

``train(params, report)`` is the job; ``report(epoch, metrics)`` is the
system's per-step report (it may raise to stop the trial: labq's StopTrial).
labq runs :func:`labq_trial` (``run: search_jobs:labq_trial``); the benchmark
wraps :func:`train` for Ray Tune itself.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable

_DATA: tuple | None = None


def data() -> tuple:
    """(X_train, X_val, y_train, y_val), loaded once per process."""
    global _DATA
    if _DATA is None:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
        _DATA = tuple(train_test_split(X, y, test_size=0.3, stratify=y, random_state=0))
    return _DATA


def train(params: dict[str, Any], report: Callable[[int, dict[str, Any]], None]) -> dict[str, Any]:
    import numpy as np
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    X_train, X_val, y_train, y_val = data()
    # The clocks start after the imports and the data: what follows is the same
    # work in both systems.
    t0, c0 = time.time(), time.thread_time()
    epochs, epoch_s = int(params["epochs"]), float(params["epoch_s"])
    clf = MLPClassifier(hidden_layer_sizes=(int(params["hidden"]),), solver="sgd", momentum=0.9,
                        learning_rate_init=float(params["lr"]), alpha=float(params["alpha"]),
                        batch_size=int(params["batch"]), random_state=0)
    classes = np.arange(10)
    acc = best = 0.0
    diverged = False
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(1, epochs + 1):
            start = time.time()
            if not diverged:
                try:
                    with np.errstate(all="ignore"):
                        clf.partial_fit(X_train, y_train, classes=classes)
                        acc = float(clf.score(X_val, y_val))
                    diverged = not all(np.isfinite(w).all() for w in clf.coefs_)
                except Exception:  # non-finite weights: the run diverged
                    diverged = True
                if diverged:
                    acc = 0.0
            best = max(best, acc)
            time.sleep(max(0.0, epoch_s - (time.time() - start)))
            report(epoch, {"acc": acc, "t0": t0, "cpu_s": time.thread_time() - c0, "run_s": time.time() - t0})
    return {"acc": acc, "best_acc": best, "epochs": epochs, "cpu_s": time.thread_time() - c0,
            "run_s": time.time() - t0}


def labq_trial(ctx) -> dict[str, Any]:
    """labq's callable job: params from the spec, report() per epoch."""
    from jobs import report

    return train(ctx.params, lambda epoch, metrics: report(step=epoch, **metrics))
