"""The plain PyTorch training loop that ``experiments/bench.py`` compares against.

Standalone (numpy + torch only), run by bench.py in an interpreter that has torch:

    /usr/bin/python3 experiments/torch_loop.py --data arrays.npz --threads 1

The network is the NWS "fixed" architecture with batch norm (three 5x5 conv blocks of
8, 16 and 32 channels, dense 128 and 64 with batch norm and dropout 0.5, 10 logits),
trained with Adam (lr 1e-3) on batches of 64. ``--data`` is an .npz file holding
``{train,val,test}_images`` (uint8 [N, 32, 32, 3], v means v / 255) and
``{train,val,test}_labels``; images turn into floats one batch at a time.

Prints one JSON line: the median seconds of one bare training step (after warm-up),
and the seconds of ``--epochs`` epochs with per-epoch evaluation on the validation and
test images (``model.eval()``, ``torch.no_grad()``, batches of ``--eval-batch``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

BN = dict(momentum=0.01, eps=1e-3)  # TF's momentum 0.99 in torch's convention


def network() -> nn.Module:
    """The fixed NWS architecture; conv: conv + bias, BN, ReLU; dense: dense, ReLU, BN, dropout."""
    layers, channels = [], 3
    for width in (8, 16, 32):
        layers += [nn.Conv2d(channels, width, 5, padding=2), nn.BatchNorm2d(width, **BN)]
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    layers.append(nn.Flatten())
    features = 4 * 4 * channels
    for width in (128, 64):
        layers += [nn.Linear(features, width), nn.ReLU(), nn.BatchNorm1d(width, **BN), nn.Dropout(0.5)]
        features = width
    layers.append(nn.Linear(features, 10))
    return nn.Sequential(*layers)


def load(path: str) -> dict[str, torch.Tensor]:
    """Images as uint8 NCHW tensors (laid out once, converted to float per batch), labels as int64."""
    arrays = np.load(path)
    out = {}
    for split in ("train", "val", "test"):
        out[f"{split}_images"] = torch.from_numpy(arrays[f"{split}_images"]).permute(0, 3, 1, 2).contiguous()
        out[f"{split}_labels"] = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255.0)


def epoch_batches(rng: np.random.Generator, n: int, batch: int) -> torch.Tensor:
    """One epoch's batches of indices: a fresh permutation, the last partial batch dropped."""
    steps = n // batch
    return torch.from_numpy(rng.permutation(n)[: steps * batch].reshape(steps, batch))


def train_step(model, optimizer, images, labels, index):
    """One Adam step on the batch at ``index``; returns (loss, correct) as tensors."""
    x, y = to_float(images[index]), labels[index]
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


def accuracy(model, images, labels, batch: int) -> float:
    """Inference-mode accuracy over ``images`` in batches of ``batch``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            logits = model(to_float(images[start : start + batch]))
            correct += int((logits.argmax(1) == labels[start : start + batch]).sum())
    model.train()
    return correct / len(labels)


def fresh(seed: int):
    torch.manual_seed(seed)
    model = network()
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def time_steps(data, args) -> float:
    """Median seconds of one training step over ``--timed-steps`` steps after ``--warmup``."""
    model, optimizer = fresh(0)
    batches = epoch_batches(np.random.default_rng(0), len(data["train_labels"]), args.batch)
    times = []
    for i in range(args.warmup + args.timed_steps):
        start = time.perf_counter()
        train_step(model, optimizer, data["train_images"], data["train_labels"], batches[i % len(batches)])
        times.append(time.perf_counter() - start)
    return float(np.median(times[args.warmup :]))


def time_epochs(data, args) -> dict:
    """``--epochs`` epochs, each followed by evaluation on validation and test, timed whole."""
    model, optimizer = fresh(1)
    rng = np.random.default_rng(1)
    steps, history = 0, []
    start = time.perf_counter()
    for _ in range(args.epochs):
        loss_sum = torch.zeros(())
        for index in epoch_batches(rng, len(data["train_labels"]), args.batch):
            loss, _ = train_step(model, optimizer, data["train_images"], data["train_labels"], index)
            loss_sum += loss
            steps += 1
        history.append({
            "train_loss_sum": float(loss_sum),
            "val_accuracy": accuracy(model, data["val_images"], data["val_labels"], args.eval_batch),
            "test_accuracy": accuracy(model, data["test_images"], data["test_labels"], args.eval_batch),
        })
    return {"seconds": time.perf_counter() - start, "steps": steps, "epochs": history}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz file of the train, val and test arrays")
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timed-steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-batch", type=int, default=500)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load(args.data)
    step_seconds = time_steps(data, args)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
              "step_seconds": step_seconds, "end_to_end": time_epochs(data, args)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
