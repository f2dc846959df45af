"""Where a row's numbers come from: the packages' versions and the machine (float
results differ from one CPU to another)."""

from __future__ import annotations

import functools
import platform
from importlib import metadata


def versions() -> dict[str, str]:
    """What produced a row's numbers: the packages' versions, and the machine (``cpu``:
    vendor, model and the instruction sets torch's kernels choose between; ``threads``),
    since float results differ from one CPU to another."""
    return {**packages(), **machine()}


def packages() -> dict[str, str]:
    """Python's version and those of privbench and the packages its numbers run on."""
    out = {"python": platform.python_version()}
    for pkg in ("privbench", "torch", "torchvision", "numpy", "scipy", "scikit-image", "opacus"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


ISA = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


@functools.lru_cache(maxsize=1)  # read once per process, not per row
def cpu() -> tuple[str, str]:
    """This CPU's vendor and model, and the instruction sets of :data:`ISA` it has."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux: the platform's own description stands in
        info["model name"] = platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = " ".join(f for f in ISA if f in flags)
    return f"{info.get('vendor_id', '?')} {info.get('model name', '?')}", isa


def machine() -> dict[str, str]:
    """This machine as float results see it: ``cpu`` (:func:`cpu`'s model, then its
    instruction sets) and torch's ``threads``."""
    import torch

    model, isa = cpu()
    return {"cpu": f"{model} ({isa})" if isa else model, "threads": str(torch.get_num_threads())}
