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


def translate(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift a batch of images by ``(dy, dx)`` pixels, filling with zeros."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        images[..., max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def train(arch: str, data: Dataset, *, epochs: int = 10, seed: int = 0, lr: float = 2e-3, batch_size: int = 64,
          out_dir: Path | None = None, max_batches: int | None = None, shift: int = 0) -> tuple[nn.Module, dict]:
    """Train ``arch`` with Adam and a cosine schedule; deterministic for a given seed.

    ``shift`` > 0 augments each batch by a random translation of up to ``shift`` pixels (zero fill).
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
            batch = x_train[idx]
            if shift:
                batch = translate(batch, *rng.integers(-shift, shift + 1, size=2))
            loss = nn.functional.cross_entropy(model(batch), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log.info("%s epoch %d: test accuracy %.4f", arch, epoch + 1, accuracy(model, data.x_test, data.y_test))
    model.eval()
    record = {"arch": arch, "dataset": data.name, "seed": seed, "split_seed": SPLIT_SEED, "epochs": epochs,
              "lr": lr, "batch_size": batch_size, "shift": shift, "n_train": len(data.x_train), "n_test": len(data.x_test),
              "test_accuracy": accuracy(model, data.x_test, data.y_test),
              "train_accuracy": accuracy(model, data.x_train, data.y_train)}
    if out_dir is not None:
        path = zoo.checkpoint_path(arch, data.name, Path(out_dir))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        log.info("wrote %s (test accuracy %.4f)", path, record["test_accuracy"])
    return model, record
