"""The CPU kernels' C++ extension (``csrc/``): built with torch.utils.cpp_extension on first
import into ``$GROUPSPARSE_CACHE`` (default ``~/.cache/groupsparse``; about 40 s once), loaded
from there afterwards. Loading it registers CPU kernels for ``groupsparse::conv2d``,
``groupsparse::linear`` and ``groupsparse::max_pool2d`` (schemas in ``runtime/ops.py``) and
their Autograd kernel, so a compiled graph calls C++ with no Python on the way.

- ``GROUPSPARSE_NATIVE=0`` leaves it unloaded; so do a CPU other than x86-64 (oneDNN's
  brgemm is JIT-compiled for x86), a missing compiler or a failed build, each with one
  warning that says why. The ops then run the torch-ops kernel: slower, same numbers.
- ``GROUPSPARSE_SANITIZE=1`` builds it with AddressSanitizer and UBSan (a separate cached
  build; ``tools/sanitize.sh`` runs a command so, with the runtimes preloaded).

Nothing here knows of plans or fx.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = [
    "NativeKernelWarning",
    "brgemm_supported",
    "load",
    "pack_linear_weight",
    "status",
    "unpacked_linear_weight",
]

SOURCES = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.cpp")))
HEADERS = tuple(sorted((Path(__file__).with_name("csrc")).glob("*.h")))
# -fopenmp: at::parallel_for is a header template whose OpenMP pragma compiles into this
# library; without the flag it runs every work item on one thread. The OpenMP runtime it links
# is the libgomp.so.1 torch has already loaded, so the kernels share torch's thread pool.
_FLAGS = ["-O3", "-fopenmp"]
# every finding fatal; Python is not instrumented, so the runtimes must be preloaded
_SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]
_TURNED_OFF = "turned off by GROUPSPARSE_NATIVE=0"

_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "module": the extension or None, "reason": why None


class NativeKernelWarning(RuntimeWarning):
    """The C++ CPU kernels are unavailable; groupsparse runs its torch-ops kernel instead."""


def _cache_dir() -> Path:
    root = os.environ.get("GROUPSPARSE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groupsparse"


def _sanitized() -> bool:
    return os.environ.get("GROUPSPARSE_SANITIZE", "0") == "1"


def _flags() -> list[str]:
    return [*_FLAGS, *_SANITIZE_FLAGS] if _sanitized() else list(_FLAGS)


def _unsupported() -> str | None:
    """Why this machine cannot run the extension, or None."""
    if os.environ.get("GROUPSPARSE_NATIVE", "1") == "0":
        return _TURNED_OFF
    if platform.machine() not in ("x86_64", "AMD64"):
        return (
            f"the CPU is {platform.machine()}; the kernels run on oneDNN's brgemm, which is "
            "JIT-compiled for x86-64"
        )
    if not sys.platform.startswith("linux"):
        return f"the build is written for Linux, not {sys.platform}"
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        return "no C++ compiler found (set CXX, or install g++)"
    return None


def _name() -> str:
    """The extension's module name: it changes with the sources, flags and torch version, so a
    stale build is never loaded."""
    key = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        key.update(path.name.encode())
        key.update(path.read_bytes())
    key.update(" ".join([*_flags(), torch.__version__]).encode())
    return f"groupsparse_cpu_{key.hexdigest()[:16]}"


def _import(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_and_import() -> ModuleType:
    if _sanitized() and "asan" not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError(
            "GROUPSPARSE_SANITIZE=1 builds the kernels with AddressSanitizer, whose runtime "
            "must be loaded before Python: run the command through tools/sanitize.sh (it sets "
            "LD_PRELOAD to $(c++ -print-file-name=libasan.so) and libubsan.so)"
        )
    name = _name()
    directory = _cache_dir() / name
    built = directory / f"{name}.so"
    if built.exists():
        return _import(name, built)
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    ld_flags = ["-fopenmp", *(_SANITIZE_FLAGS[:1] if _sanitized() else [])]
    return cpp_extension.load(
        name,
        [str(source) for source in SOURCES],
        extra_cflags=_flags(),
        extra_ldflags=ld_flags,
        extra_include_paths=[str(Path(__file__).with_name("csrc"))],
        build_directory=str(directory),
        verbose=False,
    )


def load() -> ModuleType | None:
    """The loaded extension (its kernels registered), or None, with one warning saying why."""
    if "module" in _loaded:
        return _loaded["module"]  # type: ignore[return-value]
    with _lock:
        if "module" not in _loaded:
            reason = _unsupported()
            module = None
            if reason is None:
                try:
                    module = _build_and_import()
                except Exception as error:  # noqa: BLE001 (any toolchain failure: fall back, say why)
                    reason = f"the build failed: {str(error).strip()[-2000:]}"
            if module is None and reason != _TURNED_OFF:
                warnings.warn(
                    f"groupsparse's C++ CPU kernels are unavailable ({reason}); using the "
                    "torch-ops kernel (same results, slower)",
                    NativeKernelWarning,
                    stacklevel=3,
                )
            _loaded["reason"] = reason
            _loaded["module"] = module
    return _loaded["module"]  # type: ignore[return-value]


def status() -> str:
    """One line: whether the C++ CPU kernels are in use, and if not, why."""
    if load() is not None:
        return "C++ CPU kernels (oneDNN brgemm): in use"
    return f"C++ CPU kernels: not in use ({_loaded['reason']})"


def brgemm_supported(dtype: torch.dtype) -> bool:
    """Whether the C++ kernels run ``dtype`` on this CPU: oneDNN generates brgemm for float32
    from AVX2 on, for bfloat16 with AVX512-BF16 or AMX, for float16 with AVX512-FP16 or
    AMX-FP16 (probed once per process by a tiny product)."""
    module = load()
    return module is not None and bool(module.brgemm_supported(dtype))


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """A linear plan's ``(groups, G, k)`` weights as the C++ linear kernel reads them (brgemm's
    B per group: float32 ``(groups, k, G)``; 16-bit ``(groups, ceil(k / 2), G, 2)``, VNNI)."""
    module = load()
    if module is None:
        raise RuntimeError(status())
    return module.pack_linear_weight(weight.detach().cpu()).to(weight.device)


def unpacked_linear_weight(weight: torch.Tensor, kept: int) -> torch.Tensor:
    """``pack_linear_weight``'s result seen again as ``(groups, G, k)`` (a view for float32)."""
    if weight.dim() == 3:  # (groups, k, G)
        return weight.transpose(1, 2)
    groups, _, rows, _ = weight.shape  # (groups, ceil(k / 2), G, 2)
    return weight.permute(0, 2, 1, 3).reshape(groups, rows, -1)[:, :, :kept]
