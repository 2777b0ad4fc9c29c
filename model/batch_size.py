"""How many photos go through the model at once: `--batch-size auto|N` for the indexer, `adapt` and
the service's micro-batches, one rule for all three.

A rule per device rather than a measurement at start-up: the same inputs give the same batch (and
the same manifest), it costs nothing, and a timing taken while another job holds the cores would
measure that job. An explicit number always wins.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"

# Measured on this project's 2-core CPU (efficientnet-lite0, 224 px, with model/cpu_runtime's
# tuning): ~87 img/s at batch 16 against ~72 at 32, the indexer's old default. A larger batch
# buys a CPU nothing to amortise (no kernel launches) and its activations outgrow the caches.
CPU_BATCH_SIZE = 16
# Not measured here (no GPU on this machine; bench/bench_encode.py --batch-size measures it). On a
# GPU the opposite holds: a small convnet in bf16 is bound by kernel launches at small batches, and
# its throughput keeps rising into the tens of photos a pass. 64 is where such models usually
# flatten; it keeps a 224 px batch of the project's backbones (efficientnet-lite0 to resnet50)
# under a GiB of activations, and a service's micro-batch never waits for it to fill (it takes
# what is queued).
CUDA_BATCH_SIZE = 64
# A small GPU (a laptop's 4 GiB) may share its memory with a display or another process, and the
# larger inputs `adapt` allows (up to 1024 px) need ~20x the activations of 224 px: half the batch.
SMALL_GPU_BYTES = 8 * 2**30
SMALL_GPU_BATCH_SIZE = 32

_MUST = "must be auto or a whole number of at least 1"


def parse_batch_size(value: int | str, name: str = "batch size") -> int | str:
    """`value` as "auto" or a positive int ("16" from the environment becomes 16); ValueError with
    one clear line otherwise. `name` is what the message calls the setting (e.g. --batch-size)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):  # True is an int to Python, not a batch size to anyone
        number = None
    elif isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
    if number is None or number < 1:
        raise ValueError(f"{name} {_MUST}, got {value!r}")
    return number


def batch_size_arg(text: str) -> int | str:
    """argparse `type=` for `--batch-size auto|N`: a bad value is argparse's one-line error, exit 2."""
    try:
        return parse_batch_size(text)
    except ValueError:
        # argparse names the option itself: "argument --batch-size: must be auto or ..."
        raise argparse.ArgumentTypeError(f"{_MUST}, got {text!r}") from None


def resolve_batch_size(requested: int | str, device: "torch.device | str",
                       gpu_memory_bytes: int | None = None) -> int:
    """The batch to run: `requested` itself when it is a number, else the rule for `device`'s type.
    `gpu_memory_bytes`: the GPU's total memory, when the caller knows it (default: asked of torch)."""
    requested = parse_batch_size(requested)
    if requested != AUTO:
        return requested
    if _device_type(device) != "cuda":
        return CPU_BATCH_SIZE  # the CPU's, and the cautious choice on a device without a rule of its own
    memory = gpu_memory_bytes if gpu_memory_bytes is not None else _gpu_memory_bytes(device)
    if memory is not None and memory < SMALL_GPU_BYTES:
        return SMALL_GPU_BATCH_SIZE
    return CUDA_BATCH_SIZE


def describe_batch_size(requested: int | str, used: int, device: "torch.device | str") -> str:
    """For logs: "16 (auto on cpu)" or "32 (as asked)": whether the rule or the user chose it."""
    return f"{used} (auto on {_device_type(device)})" if parse_batch_size(requested) == AUTO else f"{used} (as asked)"


def _device_type(device: "torch.device | str") -> str:
    return getattr(device, "type", None) or str(device).split(":")[0]


def _gpu_memory_bytes(device: "torch.device | str") -> int | None:
    import torch

    try:
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    except (AssertionError, RuntimeError, ValueError):  # no CUDA build, no such GPU: the plain rule
        return None
