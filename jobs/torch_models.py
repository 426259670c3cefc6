"""PyTorch models and the training-loop pieces behind ``jobs.train:torch_mlp``
and ``jobs.train:torch_cnn`` (and what ``jobs.evaluate`` needs to rebuild a
saved model).

This module imports torch at the top: only import it inside a job function
(``jobs.train`` does), never from code the scheduler imports to check params.

A model is described by a plain ``config`` dict (kind, sizes, task, classes,
target scaling) that is saved beside its ``state_dict`` in ``model.pt``, so
:func:`load_model` can rebuild it without the params or the data.
"""

from __future__ import annotations

import math
import os
import random
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from jobs.api import JobContext

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "last.pt"
PREDICT_BATCH = 1024


# --- models -------------------------------------------------------------------


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout per hidden layer, then a linear head."""

    def __init__(self, in_features: int, out_features: int, hidden: list[int], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for size in hidden:
            layers += [nn.Linear(prev, size), nn.ReLU(), nn.Dropout(dropout)]
            prev = size
        layers.append(nn.Linear(prev, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Small convnet for square single-channel images given as flat rows of
    ``side * side`` features (the reshape happens here, so callers pass the
    same 2-D arrays as to the MLP).  Per entry of ``channels``: 3x3 conv, ReLU,
    2x2 max-pool while the image is at least 2 pixels wide."""

    def __init__(self, side: int, out_features: int, channels: list[int], dropout: float,
                 in_channels: int = 1) -> None:
        super().__init__()
        self.side, self.in_channels = side, in_channels
        layers: list[nn.Module] = []
        prev, size = in_channels, side
        for width in channels:
            layers += [nn.Conv2d(prev, width, kernel_size=3, padding=1), nn.ReLU()]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            prev = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(prev * size * size, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, self.in_channels, self.side, self.side)
        return self.head(self.features(x))


def image_side(n_features: int) -> int:
    """The side of the square image ``n_features`` pixels make; ValueError when
    they cannot (prep dropped or added columns)."""
    side = math.isqrt(n_features)
    if n_features < 1 or side * side != n_features:
        raise ValueError(
            f"torch_cnn: expects square single-channel images flattened to side*side features "
            f"(digits: 8x8 = 64), but the prep output has {n_features} features, which is not a perfect square. "
            f"Keep every pixel in the prep stage: set drop_constant: false (digits has constant border pixels) "
            f"and do not use pca, select or poly_degree")
    return side


def build_model(config: dict[str, Any]) -> nn.Module:
    """The (untrained) network a config describes."""
    kind = config["kind"]
    if kind == "mlp":
        return MLP(config["in_features"], config["out_features"], list(config["hidden"]), config["dropout"])
    if kind == "cnn":
        return CNN(config["side"], config["out_features"], list(config["channels"]), config["dropout"],
                   config.get("in_channels", 1))
    raise ValueError(f"model config: unknown kind {kind!r}; expected mlp or cnn")


def make_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    params = model.parameters()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"optimizer: unknown value {name!r}; choose one of adam, adamw, sgd")


# --- device -------------------------------------------------------------------


def select_device(ctx: JobContext) -> tuple[torch.device, float | None]:
    """(device, memory fraction).  CUDA only when torch sees a GPU *and* Ray gave
    the job one (Ray sets CUDA_VISIBLE_DEVICES to it, so it is always cuda:0);
    logical GPUs (``labq run --gpus N`` on a machine without any) end up on the
    CPU.  A fractional share (0 < gpu < 1) caps this process's CUDA caching
    allocator at that share of the device's memory; None when nothing is capped."""
    if not ctx.gpu_ids or not torch.cuda.is_available():
        return torch.device("cpu"), None
    # A fractional share (gpu: 0.25, or gpu_memory) caps; whole GPUs lift a cap an
    # earlier fractional job set in this (reused) Ray worker.
    return torch.device("cuda:0"), ctx.cap_torch_gpu_memory()


def limit_threads(ctx: JobContext) -> int:
    """Use as many CPU threads as the job was given cores (at least one): jobs
    packed onto a node by fractional cpu shares would otherwise each start one
    thread per core and slow each other down, badly so when another OpenMP
    runtime (scikit-learn's) is loaded in the same process.  Without a cpu
    allocation (a job run by hand) torch's default stays."""
    try:
        cpu = float(ctx.resources.get("cpu") or 0)
    except (TypeError, ValueError):
        cpu = 0.0
    if cpu > 0:
        torch.set_num_threads(max(1, int(cpu)))
    return torch.get_num_threads()


def device_name(device: torch.device) -> str:
    return "cpu" if device.type == "cpu" else f"{device.type}:{device.index or 0}"


# --- data and the loop --------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def batches(X: torch.Tensor, y: torch.Tensor, batch_size: int,
            generator: torch.Generator) -> torch.utils.data.DataLoader:
    """Shuffled mini-batches whose order depends only on ``generator``'s state
    (saved in checkpoints, so a resumed run draws the same batches).  The sampler
    yields whole index batches: one tensor gather per batch instead of
    ``batch_size`` item fetches and a collate."""
    from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

    dataset = TensorDataset(X, y)
    sampler = BatchSampler(RandomSampler(dataset, generator=generator), batch_size, drop_last=False)
    return DataLoader(dataset, sampler=sampler, batch_size=None)


def loss_fn(task: str) -> nn.Module:
    return nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()


def train_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                device: torch.device) -> float:
    """One pass over the loader; the mean training loss per sample."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(xb)
        count += len(xb)
    return total / max(count, 1)


def _chunks(X: torch.Tensor) -> Iterator[torch.Tensor]:
    for start in range(0, len(X), PREDICT_BATCH):
        yield X[start:start + PREDICT_BATCH]


@torch.no_grad()
def raw_outputs(model: nn.Module, X: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The network's outputs for all rows (eval mode, fixed chunks), on the CPU."""
    model.eval()
    X = torch.as_tensor(X, dtype=torch.float32)
    if len(X) == 0:
        return torch.empty(0)
    return torch.cat([model(chunk.to(device)).float().cpu() for chunk in _chunks(X)])


def predict(model: nn.Module, config: dict[str, Any], X: np.ndarray,
            device: torch.device) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions, class probabilities or None), in the data's units:
    class indices for classification, de-standardized targets for regression."""
    out = raw_outputs(model, X, device)
    if config["task"] == "classification":
        proba = torch.softmax(out.double(), dim=1).numpy()
        return proba.argmax(axis=1), proba
    pred = out.double().reshape(-1).numpy() * config["y_std"] + config["y_mean"]
    return pred, None


def validate(model: nn.Module, config: dict[str, Any], X: torch.Tensor, y_raw: np.ndarray,
             y_fit: torch.Tensor, criterion: nn.Module, device: torch.device) -> dict[str, float]:
    """val_loss (the training objective on the validation rows) and val_accuracy
    (classification) or val_rmse (regression, in the target's units)."""
    out = raw_outputs(model, X, device)
    metrics = {"val_loss": float(criterion(out, y_fit.cpu()))}
    if config["task"] == "classification":
        metrics["val_accuracy"] = float((out.argmax(dim=1).numpy() == y_raw).mean())
    else:
        pred = out.double().reshape(-1).numpy() * config["y_std"] + config["y_mean"]
        metrics["val_rmse"] = float(np.sqrt(np.mean((pred - y_raw) ** 2)))
    return metrics


# --- checkpoints and model files ------------------------------------------------


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random stream training draws from, as tensors and plain values (so
    checkpoints load with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "loader": generator.get_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _python_state(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["loader"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temp file beside ``path``, fsync, then rename over it: a kill at
    any moment leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none or it cannot be
    read (then training starts over rather than failing)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a foreign or damaged file: start over, say why
        print(f"ignoring checkpoint {path}: {exc.__class__.__name__}: {exc}")
        return None


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_model(path: Path, model_state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    atomic_save({"config": config, "state_dict": model_state}, path)


def load_model(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model` (config + state_dict)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = saved["config"]
    model = build_model(config)
    model.load_state_dict(saved["state_dict"])
    model.to(device)
    model.eval()
    return model, config
