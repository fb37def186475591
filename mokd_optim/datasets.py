"""Small real datasets read from local files (no download unless asked).

Fashion-MNIST (Xiao et al. 2017, MIT licence; 60k train / 10k test 28x28 grey images, 10
classes) is the embedded default of the demo. On Debian machines it comes from the package
``dataset-fashion-mnist`` (files in ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

FASHION_MNIST_DIRS = (
    "/usr/share/datasets/fashion-mnist",
    "~/.cache/mokd_optim/fashion-mnist",
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
# Fashion-MNIST training-set statistics of pixel values scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its stored shape.

    Raises ``ValueError`` when the magic number is not an unsigned-byte IDX header.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    array = np.frombuffer(data, dtype=np.uint8, count=int(np.prod(shape)), offset=offset)
    return array.reshape(shape)


def find_fashion_mnist(root: Optional[Union[str, Path]] = None) -> Path:
    """The directory holding the four Fashion-MNIST ``.gz`` files.

    Looks in ``root`` if given, else ``$FASHION_MNIST_DIR``, else ``FASHION_MNIST_DIRS``.
    Raises ``FileNotFoundError`` with the ways to obtain the data.
    """
    candidates = (
        [root] if root is not None else [os.environ.get("FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS]
    )
    for candidate in candidates:
        if candidate is None:
            continue
        directory = Path(candidate).expanduser()
        if all((directory / name).is_file() for name in _FILES.values()):
            return directory
    searched = ", ".join(str(c) for c in candidates if c is not None)
    raise FileNotFoundError(
        f"Fashion-MNIST not found (searched: {searched}). Install the Debian package "
        "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist), set FASHION_MNIST_DIR, "
        "or call load_fashion_mnist(download=True) to fetch it with torchvision."
    )


def _download(directory: Path) -> Path:
    from torchvision.datasets import FashionMNIST  # optional dependency, only when asked

    FashionMNIST(str(directory), train=True, download=True)
    FashionMNIST(str(directory), train=False, download=True)
    raw = directory / "FashionMNIST" / "raw"
    return find_fashion_mnist(raw)


def load_fashion_mnist(
    split: str = "train",
    root: Optional[Union[str, Path]] = None,
    *,
    download: bool = False,
    limit: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images and labels as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        root: directory with the IDX ``.gz`` files (see :func:`find_fashion_mnist`).
        download: when the files are not found, download them with torchvision into
            ``~/.cache/mokd_optim/fashion-mnist`` (the only network access, and only if asked).
        limit: keep the first ``limit`` items.

    Returns:
        ``images`` uint8 ``(N, 28, 28)`` and ``labels`` int64 ``(N,)``.

    Raises:
        ValueError: unknown split. FileNotFoundError: data not found and ``download`` False.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        directory = find_fashion_mnist(root)
    except FileNotFoundError:
        if not download:
            raise
        directory = _download(Path(FASHION_MNIST_DIRS[1]).expanduser())
    images = read_idx(directory / _FILES[(split, "images")])
    labels = read_idx(directory / _FILES[(split, "labels")])
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_float_images(images: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
    """uint8 ``(N, H, W)`` -> float32 ``(N, 1, H, W)`` in [0, 1], standardised with the
    Fashion-MNIST mean/std when ``normalize``."""
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)
    if normalize:
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return x
