"""Each measurement in a fresh process, so that one configuration's memory cannot leak into another's.

Memory ([`measure_isolated`]): a fork of a server process that has imported torch and transformers and run nothing
(so it is a clean process, without paying the imports every time) builds one configuration, runs a warm-up step,
then one measured step under a [`MemoryProbe`]. Reported per configuration:

* `idle`: the process's memory after the imports, before the model and the inputs exist;
* `static`: model weights, optimizer state, gradients left over (none: `zero_grad(set_to_none=True)`) and the
  input batch, i.e. the memory right before a training step, after one warm-up step allocated the optimizer
  state, minus `idle`;
* `peak_mb`: the peak during the measured training step minus `idle` ("peak training memory");
* `act_mb` ("activation memory"): the memory held when the forward pass ends (the loss is computed) minus the
  memory right before the step: what autograd keeps for the backward pass;
* `step_mb`: the peak during the step minus the memory right before it: activations plus the gradients and
  the temporaries of backward and optimizer (it excludes weights, optimizer state and inputs).

Throughput ([`measure_interleaved`]): all configurations of a group are built in ONE process and their
training steps run round-robin (A B C A B C ...), so that the noise of a shared machine hits them alike; the
median step time of each is reported (allocator as usual there: the pinned mmap threshold of the memory
processes costs page faults). FLOPs are counted on the warm-up step (`_flops.py`). With `matmul_peak`, a plain
matmul is timed after every round in the same process, and the best is the peak.

[`measure_profile`]: one profiled step, its time and FLOPs by category (GEMM / attention / other).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _cli
from _flops import OP_CATEGORIES, count_step_flops, op_category, peak_matmul_flops, synchronize
from _memory import MemoryProbe, pin_malloc
from _report import describe, throughput
from _towers import Spec, build

_PRELOAD = ["torch", "transformers", "videofirst.adaptation"]


def _measure_memory(spec: Spec, device: str) -> dict:
    """In a fresh process: build, warm up, then measure one training step's peak memory and time."""
    import torch

    pin_malloc()
    torch.manual_seed(0)
    probe = MemoryProbe(device)
    idle = probe.current()
    # A real warm-up step: the first forward / backward also leaves ~30 MB of lasting allocations (BLAS buffers,
    # allocator pools) that would otherwise count as activation memory.
    trainee = build(dataclasses.replace(spec, count_flops=False), device)
    before = probe.current()
    held = []  # the memory when the forward pass ends
    probe.reset_peak()
    synchronize(device)
    start = time.perf_counter()
    trainee.step(lambda: held.append(probe.current()))
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = probe.peak()
    return {
        "memory_method": probe.method,
        "idle_mb": idle / 2**20,
        "static_mb": (before - idle) / 2**20,
        "peak_mb": (peak - idle) / 2**20,
        "step_mb": (peak - before) / 2**20,
        "act_mb": (held[0] - before) / 2**20,
        "step_s_isolated": seconds,
        **trainee.columns(),
    }


def _measure_timing(specs: list[Spec], device: str, rounds: int) -> list[dict]:
    """In one process: build every spec, then run their steps round-robin; per-spec median step time."""
    import torch

    torch.manual_seed(0)
    trainees = [build(spec, device) for spec in specs]  # each already warmed up once
    times: list[list[float]] = [[] for _ in specs]
    peaks: list[float] = []
    for _ in range(rounds):
        for index, trainee in enumerate(trainees):
            synchronize(device)
            start = time.perf_counter()
            trainee.step()
            synchronize(device)
            times[index].append(time.perf_counter() - start)
        if any(spec.matmul_peak for spec in specs):
            peaks.append(peak_matmul_flops(device, specs[0].matmul_sizes))
    results = []
    for trainee, samples in zip(trainees, times):
        row = {
            "step_s": statistics.median(samples),
            "step_s_samples": samples,
            **trainee.columns(),
        }
        if trainee.flops is not None:
            row["flops"] = trainee.flops
        if peaks:
            row["matmul_peak_flops"] = max(peaks)
        results.append(row)
    return results


def _profile_step(spec: Spec, device: str) -> dict:
    """Per category (GEMM / attention / other): FLOPs counted on the warm-up step, time of one profiled step."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    by_op: dict[str, int] = {}
    trainee = build(spec, device, warm_up=False)
    count_step_flops(trainee.step, by_op)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as profiler:
        trainee.step()
        synchronize(device)
    wall = time.perf_counter() - start
    seconds = dict.fromkeys(OP_CATEGORIES, 0.0)
    for event in profiler.key_averages():
        self_time = event.self_device_time_total if device.startswith("cuda") else event.self_cpu_time_total
        seconds[op_category(event.key)] += self_time / 1e6
    flops = dict.fromkeys(OP_CATEGORIES, 0)
    for op, count in by_op.items():
        flops[op_category(op)] += count
    return {"profiled_step_s": wall, "seconds": seconds, "flops": flops, "flops_by_op": by_op}


def _child(kind: str, payload: str, device: str, rounds: int, threads: int, connection: Any) -> None:
    try:
        import torch

        if threads > 0 and not device.startswith("cuda"):
            torch.set_num_threads(threads)
        specs = [Spec.from_json(item) for item in json.loads(payload)]
        if kind == "memory":
            result: Any = _measure_memory(specs[0], device)
        elif kind == "profile":
            result = _profile_step(specs[0], device)
        else:
            result = _measure_timing(specs, device, rounds)
        connection.send(("ok", result))
    except BaseException as error:  # report, never hang the parent
        connection.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc(limit=4)}"))
    finally:
        connection.close()


_CONTEXT = None


def _context() -> Any:
    """A forkserver that imported torch / transformers / videofirst once; every measurement forks from it."""
    global _CONTEXT
    if _CONTEXT is None:
        here = str(Path(__file__).resolve().parent)
        if here not in sys.path:
            sys.path.insert(0, here)
        methods = multiprocessing.get_all_start_methods()
        _CONTEXT = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            _CONTEXT.set_forkserver_preload(_PRELOAD)
    return _CONTEXT


def _run_child(kind: str, specs: Sequence[Spec], device: str, rounds: int, timeout: float) -> tuple[Any, str | None]:
    """The child's result, and None; or None and the first line of what went wrong (its error, a death, a
    time-out), with the exit code when the child exited with one."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    payload = json.dumps([spec.to_json() for spec in specs])
    process = context.Process(target=_child, args=(kind, payload, device, rounds, _cli.CPU_THREADS, sender))
    process.start()
    sender.close()
    status: tuple[str, Any] = ("error", "no result")
    if receiver.poll(timeout):
        try:
            status = receiver.recv()
        except EOFError:
            status = ("error", "the measuring process died (out of memory?)")
    else:
        status = ("error", f"timed out after {timeout:.0f} s")
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()
    if status[0] == "ok":
        return status[1], None
    message = status[1] if process.exitcode in (0, None) else f"{status[1]} (exit code {process.exitcode})"
    return None, str(message).strip().splitlines()[0]


def measure_isolated(spec: Spec, device: str, timeout: float = 900.0) -> dict:
    """Peak / activation memory (and an isolated step time) of `spec`, in a fresh process."""
    result, error = _run_child("memory", [spec], device, 0, timeout)
    return {"error": error} if error else result


def measure_profile(spec: Spec, device: str, timeout: float = 1800.0) -> dict:
    """Where one training step of `spec` spends its time and FLOPs, by category, in a fresh process."""
    result, error = _run_child("profile", [spec], device, 0, timeout)
    return {"error": error} if error else result


def measure_interleaved(specs: Sequence[Spec], device: str, rounds: int, timeout: float = 1800.0) -> list[dict]:
    """Median step times of `specs`, built in one fresh process and stepped round-robin."""
    result, error = _run_child("timing", specs, device, rounds, timeout)
    return [{"error": error} for _ in specs] if error else result


def run_groups(
    groups: Sequence[tuple[str, Sequence[Spec]]],
    device: str,
    rounds: int | Callable[[Sequence[Spec]], int],
) -> list[dict]:
    """Memory of every distinct spec (own process each), then each group's step times (one interleaved process).

    `rounds`: timing rounds per group, or a function of the group's specs giving them."""
    memory: dict[str, dict] = {}
    rows = []
    for group, specs in groups:
        for spec in specs:
            if spec.name not in memory:
                start = time.perf_counter()
                memory[spec.name] = measure_isolated(spec, device)
                shown = memory[spec.name].get("error") or f"peak {memory[spec.name]['peak_mb']:.0f} MB"
                print(
                    f"  memory  {group:>12} {spec.name:<28} {shown} ({time.perf_counter() - start:.0f} s)", flush=True
                )
        start = time.perf_counter()
        count = rounds(specs) if callable(rounds) else rounds
        timings = measure_interleaved(specs, device, count)
        print(
            f"  timing  {group:>12} {len(specs)} configs x {count} rounds ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        for spec, timing in zip(specs, timings):
            row = {"group": group, **describe(spec), **memory[spec.name], **timing}
            if "error" in memory[spec.name] or "error" in timing:
                row["error"] = memory[spec.name].get("error") or timing.get("error")
            row.update(throughput(row, spec))
            rows.append(row)
    return rows
