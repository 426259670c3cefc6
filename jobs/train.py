"""Train a model on the arrays a prep stage saved: any scikit-learn-style
estimator, or a PyTorch MLP (tabular) or small CNN (square images, e.g. digits).

    stages:
      - name: train
        run: jobs.train:sklearn
        after: [prep]
        params: {estimator: sklearn.ensemble.RandomForestClassifier, n_estimators: 100, cv: 5}

      - name: mlp
        run: jobs.train:torch_mlp
        after: [prep]
        params: {hidden: [64, 32], lr: 0.001, epochs: 30, patience: 5}

sklearn: every param except ``estimator``, ``seed`` and ``cv`` goes to the
estimator's constructor.  ``seed`` becomes ``random_state`` where the estimator
has one (0 when no seed is given) so reruns reproduce; ``cv: k`` adds k-fold
cross-validation on the training split.

torch: see :data:`TORCH_DEFAULTS` for the params; the loop (checkpoints,
resume, early stopping) is :func:`_train_torch`, the models are in
``jobs.torch_models``.

torch/sklearn/numpy/joblib are imported inside the functions: the scheduler
imports this module just to call :func:`check_params`, and that must stay cheap.
"""

from __future__ import annotations

import importlib
import difflib
import importlib.util
import inspect
import math
import re
import time
from pathlib import Path
from typing import Any

from jobs.source import defined_names
from jobs.api import JobContext, StopTrial, Upstream

RESERVED = ("estimator", "seed", "cv")
DEFAULT_SEED = 0
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")

# The torch trainers' params and their defaults.  ``hidden`` is torch_mlp's,
# ``channels`` torch_cnn's; the rest are shared.
TORCH_DEFAULTS: dict[str, Any] = {
    "hidden": [64, 32],          # MLP hidden layer sizes ([] = a linear model)
    "channels": [16, 32],        # CNN conv widths, one 3x3 conv + 2x2 max-pool each
    "dropout": 0.1,
    "optimizer": "adam",         # adam, adamw or sgd
    "lr": 1e-3,
    "weight_decay": 0.0,
    "momentum": 0.9,             # sgd only
    "batch_size": 32,
    "epochs": 20,
    "seed": 0,
    "patience": None,            # early stopping: epochs without improvement; None = off
    "min_delta": 0.0,            # how much the validation metric must improve to count
    "val_size": 0.15,            # held out of the training split when prep made no X_val
    "checkpoint_every": 1,       # epochs between checkpoints/last.pt writes
}
TORCH_PARAMS: tuple[str, ...] = tuple(TORCH_DEFAULTS)
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
_KIND_ONLY = {"hidden": "mlp", "channels": "cnn"}
_TARGET = {"mlp": "jobs.train:torch_mlp", "cnn": "jobs.train:torch_cnn"}


def check_params(params: dict[str, Any], *, function: str | None = None) -> list[str]:
    """Submit-time checks for a stage whose ``run`` is in this module.

    ``function`` (sklearn, torch_mlp, torch_cnn) picks the checks when the
    caller knows it.  The scheduler calls ``check_params(params)`` without it,
    so then the params decide: with ``estimator`` they are sklearn's; empty
    params are ambiguous and reported as a missing estimator (a torch stage
    names at least one param, e.g. epochs); anything else is checked as
    torch_mlp/torch_cnn params."""
    if function is not None:
        if function == "sklearn":
            return check_sklearn_params(params)
        kind = {"torch_mlp": "mlp", "torch_cnn": "cnn"}.get(function)
        if kind is None:
            return []  # not a trainer with known params
        return check_torch_params(params, kind)
    if "estimator" in params:
        return check_sklearn_params(params)
    if not params:
        return ["estimator: required for jobs.train:sklearn, an import path such as "
                "sklearn.ensemble.RandomForestClassifier (jobs.train:torch_mlp / torch_cnn: name at least "
                f"one param, e.g. epochs: {TORCH_DEFAULTS['epochs']})"]
    return check_torch_params(params)


def check_sklearn_params(params: dict[str, Any]) -> list[str]:
    """Problems visible without importing the estimator's package (importing
    sklearn costs about a second, too much for a submit-time check): the path is
    present, looks like ``module.Class``, its package is installed and its module
    defines that name (read from the module's source, not imported)."""
    estimator = params.get("estimator")
    if estimator is None:
        return ["estimator: required, an import path such as sklearn.ensemble.RandomForestClassifier"]
    if not isinstance(estimator, str) or not _DOTTED.match(estimator):
        return [f"estimator: expected an import path module.Class "
                f"(e.g. sklearn.linear_model.Ridge), got {estimator!r}"]
    top = estimator.split(".", 1)[0]
    try:
        found = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        found = None
    if found is None:
        return [f"estimator: package {top!r} of {estimator!r} is not installed"]
    module, _, name = estimator.rpartition(".")
    try:
        names = defined_names(module)  # read from source: no import of sklearn
    except ModuleNotFoundError:
        return [f"estimator: no module {module!r} (in {estimator!r})"]
    if names is not None and name not in names:
        close = difflib.get_close_matches(name, sorted(n for n in names if n[:1].isupper()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return [f"estimator: module {module!r} has no {name!r}{hint}"]
    seed = params.get("seed")
    if seed is not None and not _is_int(seed):
        return [f"seed: expected an integer, got {seed!r}"]
    cv = params.get("cv")
    if cv is not None and not (_is_int(cv) and cv >= 2):
        return [f"cv: expected a number of folds (an integer >= 2), got {cv!r}"]
    return []


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_torch_params(params: dict[str, Any], kind: str | None = None) -> list[str]:
    """Static checks of torch_mlp/torch_cnn params (``kind`` "mlp" or "cnn" when
    known; the scheduler's submit-time call does not know it)."""
    problems: list[str] = []
    unknown = sorted(set(params) - set(TORCH_PARAMS))
    if unknown and kind is None:
        # Not known to be a torch stage: these may be an sklearn stage's params
        # that lack the estimator; say both.
        problems.append(
            f"estimator: required for jobs.train:sklearn, an import path such as "
            f"sklearn.ensemble.RandomForestClassifier; for jobs.train:torch_mlp / torch_cnn: unknown param(s) "
            f"{', '.join(unknown)}; valid params: {', '.join(TORCH_PARAMS)}")
    elif unknown:
        valid = [name for name in TORCH_PARAMS if _KIND_ONLY.get(name, kind) == kind]
        problems.append(f"unknown param(s) {', '.join(unknown)}; valid params for {_TARGET[kind]}: "
                        f"{', '.join(valid)}")
    if kind is not None:
        for name, only in _KIND_ONLY.items():
            if name in params and only != kind:
                problems.append(f"{name}: only used by {_TARGET[only]}, not {_TARGET[kind]}")
    value = params.get("optimizer", TORCH_DEFAULTS["optimizer"])
    if value not in OPTIMIZERS:
        problems.append(f"optimizer: unknown value {value!r}; choose one of {', '.join(OPTIMIZERS)}")
    for name in ("epochs", "batch_size", "checkpoint_every"):
        value = params.get(name, TORCH_DEFAULTS[name])
        if not (_is_int(value) and value >= 1):
            problems.append(f"{name}: expected a positive integer, got {value!r}")
    patience = params.get("patience")
    if patience is not None and not (_is_int(patience) and patience >= 1):
        problems.append(f"patience: expected a positive integer (or null: no early stopping), got {patience!r}")
    seed = params.get("seed", TORCH_DEFAULTS["seed"])
    if not _is_int(seed):
        problems.append(f"seed: expected an integer, got {seed!r}")
    lr = params.get("lr", TORCH_DEFAULTS["lr"])
    if not (_is_number(lr) and lr > 0):
        problems.append(f"lr: expected a number > 0, got {lr!r}")
    for name in ("weight_decay", "momentum", "min_delta"):
        value = params.get(name, TORCH_DEFAULTS[name])
        if not (_is_number(value) and value >= 0):
            problems.append(f"{name}: expected a number >= 0, got {value!r}")
    dropout = params.get("dropout", TORCH_DEFAULTS["dropout"])
    if not (_is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"dropout: expected a probability from 0 up to (not including) 1, got {dropout!r}")
    val_size = params.get("val_size", TORCH_DEFAULTS["val_size"])
    if not (_is_number(val_size) and 0 < val_size < 1):
        problems.append(f"val_size: expected a fraction strictly between 0 and 1, got {val_size!r}")
    for name, allow_empty in (("hidden", True), ("channels", False)):
        value = params.get(name, TORCH_DEFAULTS[name])
        if not (isinstance(value, list) and (allow_empty or value) and all(_is_int(v) and v >= 1 for v in value)):
            what = "a list of positive integers (layer sizes)" if allow_empty else \
                "a non-empty list of positive integers (conv channels)"
            problems.append(f"{name}: expected {what}, e.g. {TORCH_DEFAULTS[name]}, got {value!r}")
    return problems


def _import_estimator(path: str) -> type:
    """Resolve ``module.Class``; every failure becomes one ValueError naming the
    param so the job's error says what to fix rather than showing a traceback."""
    problems = check_sklearn_params({"estimator": path})
    if problems:
        raise ValueError(problems[0])
    module_name, _, class_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"estimator: cannot import module {module_name!r} of {path!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"estimator: module {module_name!r} has no attribute {class_name!r}")
    if not inspect.isclass(cls) or not callable(getattr(cls, "fit", None)):
        raise ValueError(f"estimator: {path!r} is not an estimator class with a fit() method")
    return cls


def _valid_params(cls: type) -> set[str]:
    """Constructor params, from ``get_params()`` on a default instance; falls back
    to the signature for estimators that need arguments to be built."""
    try:
        return set(cls().get_params(deep=False))
    except Exception:
        signature = inspect.signature(cls.__init__)
        return {
            name for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        }


def build_estimator(params: dict[str, Any]) -> Any:
    """The unfitted estimator ``params`` describe (separate from fitting so it can
    be checked and reused)."""
    cls = _import_estimator(params.get("estimator"))  # type: ignore[arg-type]
    kwargs = {k: v for k, v in params.items() if k not in RESERVED}
    valid = _valid_params(cls)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"estimator {params['estimator']}: unknown params {', '.join(unknown)}; "
            f"valid params: {', '.join(sorted(valid)) or 'none'}"
        )
    if "random_state" in valid and "random_state" not in kwargs:
        seed = params.get("seed")
        kwargs["random_state"] = DEFAULT_SEED if seed is None else int(seed)
    return cls(**kwargs)


def classification_metrics(y_true: Any, pred: Any, proba: Any = None, labels: Any = None) -> dict[str, float]:
    """accuracy and f1_macro; with class probabilities (columns in ``labels``
    order) also log_loss, and roc_auc for two classes.  Shared by the trainers
    and jobs.evaluate so both report the same numbers."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    metrics = {
        "accuracy": float(accuracy_score(y_true, pred)),
        "f1_macro": float(f1_score(y_true, pred, average="macro")),
    }
    if proba is not None:
        proba = np.asarray(proba, dtype=np.float64)
        labels = list(range(proba.shape[1])) if labels is None else list(labels)
        try:
            metrics["log_loss"] = float(log_loss(y_true, proba, labels=labels))
        except ValueError:
            pass  # test labels the model never saw: no defined log loss
        if len(labels) == 2 and len(set(np.asarray(y_true).tolist())) == 2:
            metrics["roc_auc"] = float(roc_auc_score(np.asarray(y_true) == labels[1], proba[:, 1]))
    return metrics


def regression_metrics(y_true: Any, pred: Any) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    return {
        "r2": float(r2_score(y_true, pred)),
        "rmse": float(np.sqrt(mean_squared_error(y_true, pred))),
        "mae": float(mean_absolute_error(y_true, pred)),
    }


def sklearn_proba(model: Any, X: Any) -> Any:
    """Class probabilities, or None where the estimator has none (hasattr is
    False for e.g. SVC(probability=False): sklearn hides predict_proba then)."""
    if not hasattr(model, "predict_proba"):
        return None
    return model.predict_proba(X)


def _classification_metrics(model: Any, X_test: Any, y_test: Any) -> dict[str, float]:
    return classification_metrics(y_test, model.predict(X_test), sklearn_proba(model, X_test),
                                  getattr(model, "classes_", None))


def _regression_metrics(model: Any, X_test: Any, y_test: Any) -> dict[str, float]:
    return regression_metrics(y_test, model.predict(X_test))


def _cross_validate(params: dict[str, Any], X: Any, y: Any, task: str, folds: int) -> dict[str, float]:
    """k-fold cross-validation of a fresh estimator on the training split only
    (stratified folds for classifiers, as sklearn does for an int cv); scored by
    the main metric: accuracy or r2."""
    from sklearn.model_selection import cross_val_score

    scoring = "accuracy" if task == "classification" else "r2"
    scores = cross_val_score(build_estimator(params), X, y, cv=folds, scoring=scoring)
    return {"cv_mean": float(scores.mean()), "cv_std": float(scores.std()), "cv_folds": float(folds)}


def _data_input(ctx: JobContext) -> Upstream:
    """The upstream job whose artifacts hold data.npz (the only input, or the one
    of several that has it)."""
    if len(ctx.inputs) == 1:
        return ctx.input()
    found = [up for up in ctx.inputs.values() if (up.run_dir / "artifacts" / "data.npz").exists()]
    if len(found) != 1:
        return ctx.input()  # raises, naming the stages
    return found[0]


def sklearn(ctx: JobContext) -> dict[str, Any]:
    """Fit the estimator on the upstream training split, score it on the test
    split and save it as ``model.joblib``."""
    import joblib
    import numpy as np

    problems = check_sklearn_params(ctx.params)
    if problems:
        raise ValueError("; ".join(problems))
    model = build_estimator(ctx.params)
    with np.load(_data_input(ctx).artifact("data.npz"), allow_pickle=False) as data:
        X_train, X_test = data["X_train"], data["X_test"]
        y_train, y_test = data["y_train"], data["y_test"]
        task = str(data["task"])
    if task not in ("classification", "regression"):
        raise ValueError(f"data.npz: unknown task {task!r}; expected classification or regression")

    metrics: dict[str, Any] = {}
    if ctx.params.get("cv") is not None:
        metrics.update(_cross_validate(ctx.params, X_train, y_train, task, int(ctx.params["cv"])))

    started = time.perf_counter()
    model.fit(X_train, y_train)
    train_seconds = time.perf_counter() - started

    if task == "classification":
        metrics = {**_classification_metrics(model, X_test, y_test), **metrics}
    else:
        metrics = {**_regression_metrics(model, X_test, y_test), **metrics}

    model_path = ctx.artifact_path("model.joblib")
    joblib.dump(model, model_path)
    metrics["train_seconds"] = float(train_seconds)
    metrics["model_bytes"] = float(model_path.stat().st_size)
    return metrics


# --- PyTorch ------------------------------------------------------------------


def torch_mlp(ctx: JobContext) -> dict[str, Any]:
    """A multi-layer perceptron on tabular prep output (``hidden`` layer sizes)."""
    return _train_torch(ctx, "mlp")


def torch_cnn(ctx: JobContext) -> dict[str, Any]:
    """A small CNN on square single-channel images stored as flat rows (digits:
    64 features -> 1x8x8); ``channels`` conv widths."""
    return _train_torch(ctx, "cnn")


def _load_split(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Train/validation/test arrays from the prep output; validation is the prep's
    X_val when it made one, else a seeded ``val_size`` share of the training rows
    (stratified for classification where every class has two rows)."""
    import numpy as np

    upstream = _data_input(ctx)
    with np.load(upstream.artifact("data.npz"), allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    task = str(arrays["task"])
    if task not in ("classification", "regression"):
        raise ValueError(f"data.npz: unknown task {task!r}; expected classification or regression")
    out: dict[str, Any] = {"task": task, "data_job_id": upstream.job_id}
    X_train, y_train = arrays["X_train"], arrays["y_train"]
    if "X_val" in arrays and len(arrays["X_val"]):
        X_val, y_val = arrays["X_val"], arrays["y_val"]
        out["val_source"] = "prep"
    else:
        from sklearn.model_selection import train_test_split

        stratify = None
        if task == "classification":
            _, counts = np.unique(y_train, return_counts=True)
            if counts.min() >= 2:
                stratify = y_train
        try:
            X_train, X_val, y_train, y_val = train_test_split(
                X_train, y_train, test_size=params["val_size"], random_state=params["seed"], stratify=stratify)
        except ValueError:  # too few rows for a stratified split: a plain one
            X_train, X_val, y_train, y_val = train_test_split(
                X_train, y_train, test_size=params["val_size"], random_state=params["seed"])
        out["val_source"] = "train_split"
    out.update(X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val,
               X_test=arrays["X_test"], y_test=arrays["y_test"])
    if task == "classification":
        all_y = np.concatenate([y_train, y_val, arrays["y_test"]])
        if not np.issubdtype(all_y.dtype, np.integer) or all_y.min() < 0:
            raise ValueError(f"data.npz: the torch trainers need class labels encoded as integers 0..k-1 "
                             f"(jobs.prep:tabular writes them so), got {all_y.dtype} labels")
        count = int(all_y.max()) + 1
        if "classes" in arrays and len(arrays["classes"]) >= count:
            out["classes"] = [str(c) for c in arrays["classes"]]
        else:
            out["classes"] = [str(i) for i in range(count)]
    return out


def _train_torch(ctx: JobContext, kind: str) -> dict[str, Any]:
    """Train, validate each epoch, stop early, checkpoint and resume; return the
    test metrics of the best epoch's weights (saved as ``model.pt``)."""
    problems = check_torch_params(ctx.params, kind)
    if problems:
        raise ValueError("; ".join(problems))
    params = {**TORCH_DEFAULTS, **ctx.params}
    params.pop("channels" if kind == "mlp" else "hidden")

    import numpy as np
    import torch

    from jobs import torch_models as tm

    split = _load_split(ctx, params)
    task = split["task"]
    n_features = int(split["X_train"].shape[1])
    config: dict[str, Any] = {"format": 1, "kind": kind, "task": task, "in_features": n_features,
                              "dropout": float(params["dropout"]), "data_job_id": split["data_job_id"]}
    if kind == "mlp":
        config["hidden"] = [int(h) for h in params["hidden"]]
    else:
        config.update(side=tm.image_side(n_features), in_channels=1,
                      channels=[int(c) for c in params["channels"]])
    if task == "classification":
        config.update(out_features=len(split["classes"]), classes=split["classes"], y_mean=0.0, y_std=1.0)
    else:
        std = float(np.std(split["y_train"]))
        config.update(out_features=1, y_mean=float(np.mean(split["y_train"])), y_std=std if std > 0 else 1.0)

    # Device first: a fractional GPU's memory cap must be set before CUDA allocates.
    device, fraction = tm.select_device(ctx)
    threads = tm.limit_threads(ctx)
    tm.seed_everything(int(params["seed"]))
    model = tm.build_model(config).to(device)
    optimizer = tm.make_optimizer(params["optimizer"], model, float(params["lr"]),
                                  float(params["weight_decay"]), float(params["momentum"]))
    generator = torch.Generator().manual_seed(int(params["seed"]))

    def targets(y: Any) -> torch.Tensor:
        if task == "classification":
            return torch.as_tensor(y, dtype=torch.long)
        return torch.as_tensor((y - config["y_mean"]) / config["y_std"], dtype=torch.float32).reshape(-1, 1)

    X_train = torch.as_tensor(split["X_train"], dtype=torch.float32)
    X_val = torch.as_tensor(split["X_val"], dtype=torch.float32)
    y_train, y_val = targets(split["y_train"]), targets(split["y_val"])
    criterion = tm.loss_fn(task)
    loader = tm.batches(X_train, y_train, int(params["batch_size"]), generator)
    monitor, maximize = ("val_accuracy", True) if task == "classification" else ("val_rmse", False)

    state: dict[str, Any] = {"epoch": 0, "best": None, "best_loss": float("inf"), "best_epoch": 0,
                             "bad_epochs": 0, "stopped": False,
                             "diverged": False, "train_seconds": 0.0, "history": [],
                             "best_state": tm.cpu_state_dict(model)}
    last_path = ctx.checkpoints_dir / tm.CHECKPOINT_FILE
    resumed_from = _resume(ctx, tm, config, params, model, optimizer, generator, state, last_path)
    if resumed_from is not None:
        for record in state["history"]:  # the curve so far, so this attempt's metrics.jsonl is whole
            ctx.report(step=record["epoch"], **{k: v for k, v in record.items() if k != "epoch"})
        ctx.report(resumed_from_epoch=resumed_from)

    def checkpoint() -> None:
        tm.atomic_save({
            "epoch": state["epoch"], "model": tm.cpu_state_dict(model), "optimizer": optimizer.state_dict(),
            "best": state["best"], "best_loss": state["best_loss"], "best_epoch": state["best_epoch"],
            "bad_epochs": state["bad_epochs"],
            "best_state": state["best_state"], "stopped": state["stopped"], "diverged": state["diverged"],
            "train_seconds": state["train_seconds"], "history": state["history"],
            "rng": tm.rng_state(generator), "config": config, "params": params,
        }, last_path)

    epochs, patience = int(params["epochs"]), params["patience"]
    min_delta, every = float(params["min_delta"]), int(params["checkpoint_every"])
    while not state["stopped"] and state["epoch"] < epochs:
        started = time.perf_counter()
        state["epoch"] += 1
        epoch = state["epoch"]
        train_loss = tm.train_epoch(model, loader, optimizer, criterion, device)
        val = tm.validate(model, config, X_val, split["y_val"], y_val, criterion, device)
        record = {monitor: val[monitor], "val_loss": val["val_loss"], "train_loss": train_loss}
        try:
            ctx.report(step=epoch, **record)
            stopped_by_labq = None
        except StopTrial as exc:  # pruned or paused (early_stop): this epoch is checkpointed first
            stopped_by_labq = exc
        state["history"].append({"epoch": epoch, **record})
        value, best = val[monitor], state["best"]
        if math.isnan(value):
            improved = False
        elif best is None:
            improved = True
        else:
            improved = value > best + min_delta if maximize else value < best - min_delta
        # Patience counts epochs without a real improvement of the monitored metric;
        # the weights kept also move to a later epoch that ties it with a lower
        # val_loss (accuracy on a small validation set ties often).
        tie = (not improved and best is not None and value == best
               and val["val_loss"] < state.get("best_loss", float("inf")))
        if improved or tie:
            state.update(best=value, best_epoch=epoch, best_loss=val["val_loss"],
                         best_state=tm.cpu_state_dict(model))
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
        if not math.isfinite(train_loss):
            state.update(stopped=True, diverged=True)
        elif patience is not None and state["bad_epochs"] >= int(patience):
            state["stopped"] = True
        state["train_seconds"] += time.perf_counter() - started
        if epoch % every == 0 or state["stopped"] or epoch == epochs or stopped_by_labq is not None:
            checkpoint()
        if stopped_by_labq is not None:  # a paused job resumes from this epoch's checkpoint when promoted
            raise stopped_by_labq

    if state["best_epoch"]:
        model.load_state_dict(state["best_state"])
    pred, proba = tm.predict(model, config, split["X_test"], device)
    if task == "classification":
        metrics: dict[str, Any] = classification_metrics(split["y_test"], pred, proba,
                                                         list(range(config["out_features"])))
    else:
        metrics = regression_metrics(split["y_test"], pred)

    model_path = ctx.artifact_path(tm.MODEL_FILE)
    tm.save_model(model_path, tm.cpu_state_dict(model), config)
    metrics.update({
        "val_rows": int(len(split["y_val"])),
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        f"best_{monitor}": float(state["best"]) if state["best"] is not None else float("nan"),
        "early_stopped": int(state["stopped"] and not state["diverged"] and state["epoch"] < epochs),
        "train_seconds": float(state["train_seconds"]),
        "device": tm.device_name(device),
        "torch_threads": threads,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "model_bytes": float(model_path.stat().st_size),
    })
    if state["diverged"]:
        metrics["diverged"] = 1
    if resumed_from is not None:
        metrics["resumed_from_epoch"] = resumed_from
    if fraction is not None:
        metrics["gpu_memory_fraction"] = float(fraction)
    return metrics


def _resume(ctx: JobContext, tm: Any, config: dict[str, Any], params: dict[str, Any], model: Any,
            optimizer: Any, generator: Any, state: dict[str, Any], last_path: Path) -> int | None:
    """Load the previous attempt's ``checkpoints/last.pt`` (a retry or a requeue
    after a lost worker) into the model, optimizer, loop state and RNGs; the
    epoch it holds, or None when there is nothing to resume."""
    if ctx.previous_run_dir is None:
        return None
    source = Path(ctx.previous_run_dir) / "checkpoints" / tm.CHECKPOINT_FILE
    ckpt = tm.load_checkpoint(source)
    if ckpt is None:
        return None
    if ckpt.get("config") != config or ckpt.get("params") != params:
        print(f"not resuming from {source}: it was written for other params or data; starting over")
        return None
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for key in ("epoch", "best", "best_loss", "best_epoch", "bad_epochs", "stopped", "diverged", "train_seconds",
                "history", "best_state"):
        state[key] = ckpt[key]
    tm.set_rng_state(ckpt["rng"], generator)
    # Carry the checkpoint into this attempt's run dir, so an attempt after this
    # one can still resume if this one dies before its first checkpoint.
    tm.atomic_save(ckpt, last_path)
    print(f"resuming from {source} after epoch {ckpt['epoch']}")
    return int(ckpt["epoch"])
