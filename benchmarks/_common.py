"""Timing, memory and statistics helpers shared by the benchmark scripts.

Timings on a shared machine are noisy, so every comparison here is made *in the same process*,
*interleaved*: each round measures the baseline, then one case, then the baseline again, and the
case's ratio for that round is its time over the mean of the two neighbouring baseline times.
Medians over rounds are reported with their interquartile range (the spread), never a single
measurement. On CUDA a call is timed with CUDA events (synchronised after the call); on the CPU
with ``time.perf_counter``.

Peak memory of a call is the highest amount of tensor memory allocated *above the level at the
start of the call*: on CUDA ``torch.cuda.max_memory_allocated`` after a reset, on the CPU the
running sum of every allocation and free of torch's CPU allocator as recorded by
``torch.profiler`` (``profile_memory=True``) -- the CPU analogue of the CUDA counter (RSS and
``tracemalloc`` do not see torch's allocations reliably).
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch

Step = Callable[[], Any]


def configure(threads: int, device: str) -> torch.device:
    """Set torch's intra-op threads and return the device, checking that CUDA exists if asked."""
    torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch.cuda.is_available() is False")
    return torch.device(device)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Step, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (CUDA events on a GPU, ``perf_counter`` on the CPU)."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


def time_repeated(
    fn: Step, device: torch.device, *, min_seconds: float = 0.05, max_calls: int = 10_000
) -> float:
    """Mean seconds per call of a fast ``fn``, called back to back until ``min_seconds`` have passed.

    Used for microsecond-scale calls (K x K weightings) where one call is below the clock's
    resolution; the number of calls is fixed by a first calibration call.
    """
    first = max(time_call(fn, device), 1e-7)
    calls = int(min(max_calls, max(1, math.ceil(min_seconds / first))))

    def many() -> None:
        for _ in range(calls):
            fn()

    return time_call(many, device) / calls


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of ``values`` (``n`` of them)."""
    ordered = sorted(float(v) for v in values)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def interleaved(
    cases: Mapping[str, Step],
    baseline: str,
    device: torch.device,
    *,
    rounds: int,
    warmup: int = 1,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    prepare: Mapping[str, Step] | None = None,
) -> dict[str, dict[str, Any]]:
    """Time every case against ``baseline`` measured right before and right after it.

    Each round visits the non-baseline cases in a new random order (seeded), as
    ``B c1 B c2 B ... cm B``. Returns, per case, the raw seconds, the per-round ratios to the
    neighbouring baselines, and their :func:`quantiles` (``time`` and ``ratio``). The baseline's
    own entry has ratio 1 by construction. Cases are warmed up ``warmup`` times first.
    ``prepare[name]``, when given, runs right before every call of that case, untimed (e.g. to
    restore inputs that the case overwrites in place).
    """
    names = [name for name in cases if name != baseline]
    before_call = prepare or {}

    def timed(name: str) -> float:
        if name in before_call:
            before_call[name]()
            synchronize(device)
        return time_call(cases[name], device)

    for _ in range(warmup):
        for name in [baseline, *names]:
            if name in before_call:
                before_call[name]()
            cases[name]()
    synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    for index in range(rounds):
        order = names[:]
        rng.shuffle(order)
        before = timed(baseline)
        seconds[baseline].append(before)
        for name in order:
            elapsed = timed(name)
            after = timed(baseline)
            seconds[name].append(elapsed)
            seconds[baseline].append(after)
            ratios[name].append(elapsed / (0.5 * (before + after)))
            before = after
        if progress is not None:
            progress(f"round {index + 1}/{rounds} done")
    result: dict[str, dict[str, Any]] = {}
    for name in cases:
        entry: dict[str, Any] = {"seconds": seconds[name], "time": quantiles(seconds[name])}
        if name == baseline:
            entry["ratios"] = [1.0] * rounds
            entry["ratio"] = quantiles([1.0])
        else:
            entry["ratios"] = ratios[name]
            entry["ratio"] = quantiles(ratios[name])
        result[name] = entry
    return result


def paired_ratio(
    result: Mapping[str, Mapping[str, Any]], numerator: str, denominator: str
) -> dict[str, float]:
    """Quantiles of the per-round ratio ``numerator / denominator`` of two :func:`interleaved` cases.

    Both are measured against the same baseline in the same rounds, so the ratio of their
    per-round ratios cancels the machine's drift between rounds.
    """
    top = result[numerator]["ratios"]
    bottom = result[denominator]["ratios"]
    return quantiles([a / b for a, b in zip(top, bottom)])


def peak_memory(fn: Step, device: torch.device, prepare: Callable[[], Any] | None = None) -> int:
    """Peak bytes of tensor memory allocated during one call of ``fn``, above the level at its start.

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the running sum of
    the allocation/free events that ``torch.profiler`` records for torch's CPU allocator.
    ``prepare`` runs first, outside the measurement: it should free what the call would free
    anyway (e.g. ``.grad`` tensors from an earlier step, released by ``zero_grad``), because a
    free of memory allocated before the measurement would lower the count.
    """
    if prepare is not None:
        prepare()
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return int(peak)


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (``os.getloadavg``), ``None`` where unavailable.

    Recorded before and after every run: a single-threaded benchmark on an otherwise idle
    machine shows about 1 (its own process).
    """
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces a run, as written in the reports."""
    return " ".join(["python", script, *argv])
