"""Shared helpers of the ``test_kd_*`` tests: real images from Fashion-MNIST, tiny models."""

from __future__ import annotations

import gzip
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(count: int, *, split: str = "t10k", size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` Fashion-MNIST images as ``(count, 3, size, size)`` float32 in [0, 1]
    (grey replicated to 3 channels, zero-padded from 28 px when ``size > 28``) and their labels.

    Reads the IDX files of the Debian package ``dataset-fashion-mnist`` (``make data``); a
    missing file fails the test with that hint rather than skipping it.
    """
    images_path = FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz"
    labels_path = FASHION_MNIST_DIR / f"{split}-labels-idx1-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(f"{images_path} is missing: run `make data` (Debian package dataset-fashion-mnist)")
    with gzip.open(images_path, "rb") as handle:
        header = np.frombuffer(handle.read(16), dtype=">u4")
        assert header[0] == 2051, "not an IDX image file"
        rows, cols = int(header[2]), int(header[3])
        pixels = np.frombuffer(handle.read(count * rows * cols), dtype=np.uint8).reshape(count, rows, cols)
    with gzip.open(labels_path, "rb") as handle:
        header = np.frombuffer(handle.read(8), dtype=">u4")
        assert header[0] == 2049, "not an IDX label file"
        labels = np.frombuffer(handle.read(count), dtype=np.uint8)
    images = torch.from_numpy(pixels.astype(np.float32) / 255.0)[:, None].repeat(1, 3, 1, 1)
    if size > rows:
        pad = size - rows
        images = nn.functional.pad(images, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return images, torch.from_numpy(labels.astype(np.int64))


@pytest.fixture(autouse=True)
def one_cpu_thread():
    """Run a test with one intra-op thread, restoring the previous count afterwards.

    Autouse in every ``test_kd_*`` module that imports it. The models are tiny, so threads buy
    nothing, and on a busy 2-core machine OpenMP threads competing with other processes slowed
    the ResNet end-to-end test from 4 s to 107 s (measured).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TinyNet(nn.Module):
    """A small CNN with named stages: ``stem``, ``layer1``, ``layer2`` (a Sequential), ``fc``."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))
