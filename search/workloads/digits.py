"""digits-cnn: a small CNN on scikit-learn's bundled 8x8 digits (1,797 images), for tests and one-minute demos."""
from __future__ import annotations

from pathlib import Path

import torch

from search.data import TensorLoader
from search.training import evaluate, train
from search.workloads.base import Workload
from search.workloads.cache import cached_dense
from search.workloads.models import digits_cnn

DENSE_EPOCHS = 20
SPLIT = {"test": 400, "val": 300}


def load_digits_tensors(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The digits split train/val/test = 1097/300/400 with a fixed seed, images scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).div_(16).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    held_out = SPLIT["test"] + SPLIT["val"]
    test, val, tr = order[:SPLIT["test"]], order[SPLIT["test"]:held_out], order[held_out:]
    return {"train": (x[tr], y[tr]), "val": (x[val], y[val]), "test": (x[test], y[test])}


def digits_cnn_workload(*, seed: int = 0, cache_dir: Path, data_dir: Path | None = None,
                        device: str = "cpu") -> Workload:
    """The tiny workload; its dense model trains in seconds and is cached like the others."""
    splits = load_digits_tensors(seed)
    train_loader = TensorLoader(*splits["train"], 64, shuffle=True, seed=seed)
    val_loader, test_loader = TensorLoader(*splits["val"], 300), TensorLoader(*splits["test"], 400)
    torch.manual_seed(seed)
    model = digits_cnn()

    def train_dense(model: torch.nn.Module) -> dict:
        train(model, train_loader, epochs=DENSE_EPOCHS, lr=0.05, device=device)
        return {"accuracy": evaluate(model, val_loader, device), "test_accuracy": evaluate(model, test_loader, device)}

    metrics = cached_dense(model, f"digits-cnn-seed{seed}", cache_dir, train_dense)
    return Workload("digits-cnn", model.eval().cpu(), train_loader, val_loader, test_loader,
                    example_inputs=splits["val"][0][:1].clone(), calibration=train_loader.subset(512),
                    finetune_lr=0.02, notes={"dense_metrics": metrics})
