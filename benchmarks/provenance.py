"""Where a result came from: the commit and whether the tree was clean, the command, the date,
and the machine (CPU model and ISA, GPU, torch and the other libraries that ran).

    >>> isa_of({"avx2", "avx512f", "amx_tile", "amx_bf16"})
    'AMX'
    >>> machine_slug({"cpu": "AMD EPYC", "isa": "AVX2", "cores": 2})
    'amd-epyc-avx2-2c'
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ISA_FLAGS",
    "REPO",
    "cpu_flags",
    "cpu_model",
    "describe_machine",
    "describe_run",
    "git_state",
    "isa_of",
    "machine_slug",
]

REPO = Path(__file__).resolve().parents[1]

# the /proc/cpuinfo flags that decide which kernels oneDNN, OpenVINO and groupsparse can run
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
)  # fmt: skip
# settings that change what runs, recorded when set
ENVIRONMENT = re.compile(r"^(OMP_|KMP_|GOMP_|MKL_|ONEDNN_|DNNL_|ATEN_|TORCH_|GROUPSPARSE_|OV_)")
# what a device machine that has no .git can be told (tools/gpu_lease.sh passes them on)
COMMIT_VARIABLE, DIRTY_VARIABLE = "BENCH_COMMIT", "BENCH_DIRTY"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8488C")."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none)."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def isa_of(flags: set[str]) -> str:
    """The widest x86 matrix/vector ISA in ``flags``: "AMX" (bf16 tiles), "AVX-512", "AVX2",
    or the machine's architecture where none of them is there (aarch64, an old x86)."""
    if {"amx_tile", "amx_bf16"} <= flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    properties = torch.cuda.get_device_properties(0)
    return {
        "name": properties.name,
        "count": torch.cuda.device_count(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "memory_gib": round(properties.total_memory / 2**30, 1),
        "multiprocessors": properties.multi_processor_count,
        "torch_cuda": torch.version.cuda,
    }


def describe_machine(threads: int) -> dict[str, Any]:
    """CPU model and ISA, cores, GPU (or None), the libraries' versions, the load at start."""
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "isa": isa_of(flags),
        "isa_flags": [flag for flag in ISA_FLAGS if flag in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "threads": threads,
        "gpu": _gpu(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": {
            name: _version(name)
            for name in (
                "openvino",
                "transformers",
                "triton",
                "cuda-python",
                "cuda-bindings",
                "cuda-core",
                "nvmath-python",
                "nvidia-cuda-nvrtc",
                "nvidia-cublas",
            )
        },
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_slug(machine: dict[str, Any], device: str = "cpu") -> str:
    """The results folder of a machine: "amd-epyc-avx2-2c" (CPU model, ISA, cores) for CPU
    suites, "nvidia-h100" (the GPU's first two words) for suites that ran on a GPU."""
    if device == "cuda" and machine.get("gpu"):
        return _slug(" ".join(machine["gpu"]["name"].split()[:2]))
    name = re.sub(r"\(r\)|\(tm\)|\bcpu\b|processor|@.*|\d+-core", "", machine["cpu"].lower())
    isa = machine["isa"].lower().replace("-", "")  # "AVX-512" -> "avx512"
    return f"{_slug(name) or 'cpu'}-{_slug(isa)}-{machine['cores']}c"


RESULTS = "benchmarks/results/"


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """{"commit", "dirty", "dirty_paths"} of the checkout; without git (a device machine's copy
    of the tree) from $BENCH_COMMIT / $BENCH_DIRTY, else None."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        dirty = os.environ.get(DIRTY_VARIABLE)
        return {
            "commit": os.environ.get(COMMIT_VARIABLE),
            "dirty": None if dirty is None else dirty not in ("0", "false", ""),
            "dirty_paths": [],
            "commit_from": "environment" if COMMIT_VARIABLE in os.environ else "unknown",
        }
    # results and their generated indexes are what runs write, not what they measure: a suite
    # run after another (which rewrote an INDEX.md) is not "dirty" for it
    paths = [p for p in (line[3:] for line in status.splitlines()) if not p.startswith(RESULTS)]
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths[:20], "commit_from": "git"}


def describe_run(command: str, repo: Path = REPO) -> dict[str, Any]:
    """The provenance block of a new result."""
    return {
        **git_state(repo),
        "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "environment": {k: v for k, v in sorted(os.environ.items()) if ENVIRONMENT.match(k)},
        "backfilled": False,
    }
