"""Hardware and software description printed and stored by every benchmark."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def describe() -> dict[str, Any]:
    """CPU/GPU model, core count, Python/torch/numpy versions and the date."""
    import datetime

    import numpy

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def as_text(info: dict[str, Any]) -> str:
    device = info.get("gpu", "no GPU")
    return (
        f"{info['date']}; {info['cpu']} ({info['cpu_cores']} cores, {info['torch_threads']} torch threads), {device}; "
        f"Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}"
    )
