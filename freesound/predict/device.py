"""Can the installed torch run on this device? One tiny convolution, before any weight is read.

A CUDA build of torch carries kernels for a list of GPU architectures only; on another GPU (a
Kaggle P100, sm_60, under a build that dropped it) the first convolution fails with "no kernel
image is available for execution on the device". ``device_problem`` finds that out in a
millisecond and says it in one sentence; the kernel then falls back to the CPU and the local
commands stop (``require_device``).
"""

from __future__ import annotations

import torch

from freesound.errors import FreesoundError


class UnusableDeviceError(FreesoundError):
    """The installed torch cannot run a convolution on the chosen device."""


def _probe(device: torch.device) -> None:
    """A 3x3 convolution of a 1x1x8x8 input on ``device``, copied back to the host (so that an
    asynchronous CUDA failure surfaces here)."""
    image = torch.ones(1, 1, 8, 8, device=device)
    torch.nn.functional.conv2d(image, torch.ones(1, 1, 3, 3, device=device), padding=1).cpu()


def describe_device(device: torch.device) -> str:
    """``cuda:0 (Tesla P100-PCIE-16GB, sm_60)`` for a GPU; the device itself otherwise."""
    if device.type != "cuda":
        return str(device)
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, sm_{major}{minor})"
    except (RuntimeError, AssertionError) as error:  # no driver, or a torch without CUDA
        return f"{device} (not described: {error})"


def device_problem(device) -> str | None:
    """Run one tiny convolution on ``device``; None if it works, else one sentence naming the
    device, the error and the GPU architectures the installed torch supports
    (``torch.cuda.get_arch_list``)."""
    device = torch.device(device)
    try:
        _probe(device)
    except (RuntimeError, AssertionError) as error:  # torch asserts when built without CUDA
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        architectures = ", ".join(torch.cuda.get_arch_list()) or "none (a CPU-only build)"
        return (f"torch {torch.__version__} cannot run a convolution on {describe_device(device)} ({reason}); "
                f"its GPU architectures: {architectures}")
    return None


def require_device(device) -> None:
    """``device_problem`` as an ``UnusableDeviceError`` (what the local commands do)."""
    problem = device_problem(device)
    if problem:
        raise UnusableDeviceError(f"{problem}; pick another --device or install a torch build for this GPU")
