"""The DMC training step in plain PyTorch, which ``experiments/meta_bench.py --torch-python`` compares against.

Standalone (numpy + torch only), run in an interpreter that has torch:

    /usr/bin/python3 experiments/torch_dmc.py --data batch.npz --width 0.5 --threads 1

The network is ``nwsjax.meta.models.DMC`` written plainly: for each conv layer of the
plan (``--plan``, JSON ``[[channels, pool], ...]`` as ``dmc_plan`` gives it) a 1-D
convolution of kernel 5, 'same' padding, + bias, ReLU, batch norm (momentum 0.1,
eps 1e-5: flax's 0.9 in torch's convention), 2x max pooling where the plan says; then
dense 1024 x 4 and 64 (ReLU, batch norm, dropout 0.5), then the class layer; widths
multiplied by ``--width``. Adam (lr 1e-3), cross-entropy. ``--data`` is an .npz file
holding ``x`` (float32 ``[batch, length]``, one slice per sample) and ``y`` (int labels).

Prints one JSON line: the median seconds of one training step on that batch (forward,
backward, Adam) after ``--warmup`` steps, over ``--timed-steps`` steps.
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

BN = dict(momentum=0.1, eps=1e-5)


def network(plan, length: int, width: float, classes: int) -> nn.Module:
    scale = lambda n: max(1, int(round(n * width)))  # noqa: E731
    layers, channels = [], 1
    for out, pool in plan:
        out = scale(out)
        layers += [nn.Conv1d(channels, out, 5, padding=2), nn.ReLU(), nn.BatchNorm1d(out, **BN)]
        if pool and length >= 2:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        channels = out
    layers.append(nn.Flatten())
    features = channels * length
    for n in (1024, 1024, 1024, 1024, 64):
        layers += [nn.Linear(features, scale(n)), nn.ReLU(), nn.BatchNorm1d(scale(n), **BN), nn.Dropout(0.5)]
        features = scale(n)
    layers.append(nn.Linear(features, classes))
    return nn.Sequential(*layers)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz file holding x [batch, length] and y [batch]")
    p.add_argument("--plan", required=True, help="JSON list of [channels, pool] per conv layer")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--threads", type=int, required=True, help="torch.set_num_threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arrays = np.load(args.data)
    x = torch.from_numpy(arrays["x"].astype(np.float32))[:, None, :]  # [batch, 1, length]
    y = torch.from_numpy(arrays["y"].astype(np.int64))
    model = network(json.loads(args.plan), x.shape[-1], args.width, args.classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    times = []
    for _ in range(args.warmup + args.timed_steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        float(loss)
        times.append(time.perf_counter() - start)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                      "step_seconds": float(np.median(times[args.warmup:])),
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
