"""Deterministic training of the zoo's architectures on the offline datasets."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from . import zoo
from .data import SPLIT_SEED, Dataset

log = logging.getLogger(__name__)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(torch.as_tensor(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])
    return float((preds.numpy() == y).mean())


def train(arch: str, data: Dataset, *, epochs: int = 10, seed: int = 0, lr: float = 2e-3, batch_size: int = 64,
          out_dir: Path | None = None, max_batches: int | None = None) -> tuple[nn.Module, dict]:
    """Train ``arch`` with Adam and a cosine schedule; deterministic for a given seed.

    Writes ``<arch>_<dataset>.pt`` and ``.json`` to ``out_dir`` when given. ``max_batches`` cuts each
    epoch short (for tests).
    """
    torch.manual_seed(seed)
    model = zoo.build(arch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = int(np.ceil(len(data.x_train) / batch_size))
    if max_batches is not None:
        steps_per_epoch = min(steps_per_epoch, max_batches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    rng = np.random.default_rng(seed)
    x_train, y_train = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    for epoch in range(epochs):
        model.train()
        order = torch.as_tensor(rng.permutation(len(x_train)))
        bar = tqdm(range(steps_per_epoch), desc=f"{arch} epoch {epoch + 1}/{epochs}", leave=False)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log.info("%s epoch %d: test accuracy %.4f", arch, epoch + 1, accuracy(model, data.x_test, data.y_test))
    model.eval()
    record = {"arch": arch, "dataset": data.name, "seed": seed, "split_seed": SPLIT_SEED, "epochs": epochs,
              "lr": lr, "batch_size": batch_size, "n_train": len(data.x_train), "n_test": len(data.x_test),
              "test_accuracy": accuracy(model, data.x_test, data.y_test),
              "train_accuracy": accuracy(model, data.x_train, data.y_train)}
    if out_dir is not None:
        path = zoo.checkpoint_path(arch, data.name, Path(out_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        log.info("wrote %s (test accuracy %.4f)", path, record["test_accuracy"])
    return model, record
