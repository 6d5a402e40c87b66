"""The native CPU kernels (``csrc/``): a group-sparse conv2d (``grouped_gemm.cpp``) or linear
(``grouped_linear.cpp``) as one fused gather + GEMM, and an NCHW max-pool (``max_pool.cpp``),
built with the system's C++ compiler on first use and loaded with ctypes.

Why it exists: the torch-ops kernel (``cpu.grouped_conv2d``'s fallback) writes the gathered
columns to memory and hands G-row panels to MKL, which runs them at about 80% of its speed on
wider GEMMs. The native kernel gathers each tile of pixels into a cache-resident panel and
multiplies it there with an AVX2/FMA microkernel, on torch's own thread pool.

- Built once per source, torch version and compiler into ``$GROUPSPARSE_CACHE`` (default
  ``~/.cache/groupsparse``), a few seconds; later imports load the cached library.
- ``GROUPSPARSE_SANITIZE=1`` builds it with AddressSanitizer and UBSan (``tools/sanitize.sh``
  runs a command so).
- ``GROUPSPARSE_NATIVE=0`` turns it off. Without an x86-64 CPU with AVX2 and FMA, without a
  compiler, or when the build fails, ``library()`` returns None, a warning says why (once),
  and the CPU runtime keeps to torch ops: slower, same numbers.

Nothing here knows of plans or fx; ``cpu.py`` decides when to call ``grouped_gemm``.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ConvCall",
    "LinearCall",
    "NativeKernelWarning",
    "grouped_gemm",
    "grouped_linear",
    "library",
    "max_pool2d",
    "pad2d",
    "status",
]

SOURCES = tuple(
    Path(__file__).with_name("csrc") / name
    for name in ("grouped_gemm.cpp", "grouped_linear.cpp", "max_pool.cpp", "pad.cpp")
)
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
# GROUPSPARSE_SANITIZE=1: built with AddressSanitizer and UndefinedBehaviorSanitizer, every
# finding fatal. Python itself is not instrumented, so the sanitizers' runtimes must be
# loaded first: tools/sanitize.sh sets LD_PRELOAD (and ASAN_OPTIONS) and runs a command so.
_SANITIZE_FLAGS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]

_TURNED_OFF = "turned off by GROUPSPARSE_NATIVE=0"
_lock = threading.Lock()
_loaded: dict[str, object] = {}  # "library": CDLL or None, "reason": why it is None


class NativeKernelWarning(RuntimeWarning):
    """The native CPU kernel is unavailable; groupsparse runs its torch-ops kernel instead."""


def _cache_dir() -> Path:
    root = os.environ.get("GROUPSPARSE_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groupsparse"


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _unsupported() -> str | None:
    """Why this machine cannot run the kernel, or None."""
    if os.environ.get("GROUPSPARSE_NATIVE", "1") == "0":
        return _TURNED_OFF
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the CPU is {platform.machine()}, the kernel is written for x86-64 AVX2"
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU lacks AVX2/FMA (torch reports {torch.backends.cpu.get_cpu_capability()})"
    if not sys.platform.startswith("linux"):
        return f"the build is written for Linux, not {sys.platform}"
    if _compiler() is None:
        return "no C++ compiler found (set CXX, or install g++)"
    return None


def _sanitized() -> bool:
    return os.environ.get("GROUPSPARSE_SANITIZE", "0") == "1"


def _flags() -> list[str]:
    return [*_FLAGS, *_SANITIZE_FLAGS] if _sanitized() else list(_FLAGS)


def _command(compiler: str, sources: tuple[Path, ...], target: Path) -> list[str]:
    from torch.utils import cpp_extension

    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    libraries = cpp_extension.library_paths()
    return [
        compiler,
        *_flags(),
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        *(str(source) for source in sources),
        "-o",
        str(target),
        *(f"-L{path}" for path in libraries),
        "-lc10",
        "-ltorch_cpu",
        *(f"-Wl,-rpath,{path}" for path in libraries),
    ]


def _build() -> Path:
    """The compiled library's path, building it first when the cache lacks it."""
    compiler = _compiler()
    assert compiler is not None
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.read_bytes())
    key.update(" ".join([compiler, *_flags(), torch.__version__]).encode())
    variant = "-sanitized" if _sanitized() else ""
    target = _cache_dir() / f"grouped_gemm{variant}-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target, then rename: processes building at once never load half a file
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / target.name
        done = subprocess.run(
            _command(compiler, SOURCES, partial), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"the build failed:\n{done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    return target


def _load() -> ctypes.CDLL:
    path = _build()
    if _sanitized() and "asan" not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError(
            "GROUPSPARSE_SANITIZE=1 builds the kernels with AddressSanitizer, whose runtime "
            "must be loaded before Python: run the command through tools/sanitize.sh (it sets "
            "LD_PRELOAD to $(c++ -print-file-name=libasan.so) and libubsan.so)"
        )
    library = ctypes.CDLL(str(path))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    library.gs_grouped_gemm_f32.argtypes = (
        [pointer] * 6 + [size] * 14 + [ctypes.c_int] * 2 + [pointer] * 2 + [size] * 2
    )
    library.gs_grouped_gemm_f32.restype = ctypes.c_int
    library.gs_grouped_linear_f32.argtypes = [pointer] * 5 + [size] * 6 + [ctypes.c_int]
    library.gs_grouped_linear_f32.restype = None
    library.gs_max_pool2d_f32.argtypes = [pointer] * 2 + [size] * 13
    library.gs_max_pool2d_f32.restype = None
    library.gs_pad2d_f32.argtypes = [pointer] * 2 + [size] * 7
    library.gs_pad2d_f32.restype = None
    return library


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None (with one warning) when it cannot be had here."""
    if "library" in _loaded:
        return _loaded["library"]  # type: ignore[return-value]
    with _lock:
        if "library" not in _loaded:
            reason = _unsupported()
            loaded = None
            if reason is None:
                try:
                    loaded = _load()
                except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                    reason = str(error)
            if loaded is None and reason != _TURNED_OFF:  # asked for: no warning
                warnings.warn(
                    f"groupsparse's native CPU kernel is unavailable ({reason}); using the "
                    "torch-ops kernel (same results, slower)",
                    NativeKernelWarning,
                    stacklevel=3,
                )
            _loaded["reason"] = reason
            _loaded["library"] = loaded
    return _loaded["library"]  # type: ignore[return-value]


def status() -> str:
    """One line: whether the native kernel is in use, and if not, why."""
    if library() is not None:
        return "native CPU kernel: in use"
    return f"native CPU kernel: not in use ({_loaded['reason']})"


def _address(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _library_for(**tensors: torch.Tensor | None) -> ctypes.CDLL:
    """The library, once every tensor given (by name; None skipped) is a contiguous float32
    CPU tensor, as the raw entry points take them (else TypeError)."""
    loaded = library()
    if loaded is None:
        raise RuntimeError(status())
    for name, tensor in tensors.items():
        if tensor is not None and not (
            tensor.dtype == torch.float32 and tensor.is_contiguous() and tensor.device.type == "cpu"
        ):
            raise TypeError(
                f"the native kernel takes contiguous float32 CPU tensors; {name} is "
                f"{tensor.dtype} on {tensor.device} (contiguous: {tensor.is_contiguous()})"
            )
    return loaded


def interleave_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``(groups, G, k)`` -> ``(groups, ceil(G / rows), k, rows)``: each block of ``rows``
    output rows interleaved column by column (rows past G zero), the layout the conv
    microkernel reads as one stream (row by row it was ``rows`` streams of broadcasts)."""
    groups, group_rows, kept = weight.shape
    blocks = -(-group_rows // rows)
    padded = weight.new_zeros(groups, blocks * rows, kept)
    padded[:, :group_rows] = weight
    return padded.view(groups, blocks, rows, kept).transpose(2, 3).contiguous()


class ConvCall:
    """The native conv kernel for one layer and input shape: its constant tensors and sizes
    checked once, then each call passes only the padded input, the output and a residual.

    ``offsets``: int64 ``(groups, k)``; ``weight``: contiguous float32 ``(groups, G, k)``
    (interleaved here for the microkernel, once);
    ``batch`` images of ``image`` floats in; ``out_image`` floats per output image;
    ``tile``: pixels per microkernel call, 24 (4 x 24) or 16 (6 x 16); ``grid``: ``(grid_w,
    src_row, src_col)``; ``out_channel``: the output's channel stride. The C++ source says how
    pixels map. The tensors are kept alive by the call.

    ``taps`` (int64 ``(groups, k, 3)``: plane start, dy, dx of each kept column) with
    ``in_hw``: the input is the unpadded image (``image`` = C*H*W floats) and the gather pads
    it; only for a wide grid of one tile per row (``grid_w == tile``) or a grid as wide as
    the image (``grid_w == W``, stride 1: tiles run across rows)."""

    def __init__(
        self,
        offsets: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        batch: int,
        image: int,
        out_image: int,
        pixels: int,
        grid: tuple[int, int, int],
        valid_w: int,
        dst_row: int,
        out_channel: int,
        relu: bool,
        chunk: int = 96,
        tile: int = 24,
        taps: torch.Tensor | None = None,
        in_hw: tuple[int, int] = (0, 0),
    ) -> None:
        groups, group_rows, kept = weight.shape
        loaded = _library_for(weight=weight, bias=bias)
        if offsets.dtype != torch.int64 or not offsets.is_contiguous() or offsets.numel() != groups * kept:
            raise TypeError(
                f"the native kernel takes {groups * kept} contiguous int64 indices; got "
                f"{offsets.dtype} of shape {tuple(offsets.shape)}"
            )
        if tile not in (16, 24):
            raise ValueError(f"the native conv kernel tiles 16 or 24 pixels; got {tile}")
        tap_range = None
        if taps is not None:
            malformed = (
                taps.dtype != torch.int64
                or not taps.is_contiguous()
                or taps.numel() != groups * kept * 3
                or grid[0] not in (tile, in_hw[1])
            )
            # (min dy, max dy, min dx, max dx), found once for the kernel's mask tables
            tap_range = taps.new_zeros(4)
            if not malformed and taps.numel():
                shifts = taps.view(-1, 3)[:, 1:]
                tap_range = torch.stack([shifts.min(0).values, shifts.max(0).values], 1).reshape(-1)
            low_y, high_y, low_x, high_x = (int(v) for v in tap_range)
            if malformed or max(high_y - low_y, high_x - low_x) >= 64:
                raise TypeError(
                    f"taps must be {groups * kept} contiguous int64 (plane, dy, dx) rows whose dy "
                    f"and dx each span fewer than 64, on a grid one tile ({tile} pixels) or one "
                    f"image row ({in_hw[1]} pixels) wide; got {taps.dtype} {tuple(taps.shape)}, "
                    f"grid {grid}"
                )
        weight = interleave_rows(weight, 6 if tile == 16 else 4)
        self.tensors = (offsets, weight, bias, taps, tap_range)
        self.unpadded = taps is not None
        self.input_numel, self.output_numel = batch * image, batch * out_image
        self._function = loaded.gs_grouped_gemm_f32
        self._head = (offsets.data_ptr(), weight.data_ptr(), _address(bias))
        grid_w, src_row, src_col = grid
        self._tail = (
            batch, image, out_image, groups, group_rows, kept, pixels, grid_w, src_row, src_col,
            valid_w, dst_row, out_channel, chunk, tile, int(relu), _address(taps),
            _address(tap_range), *in_hw,
        )  # fmt: skip

    def __call__(
        self, flat: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Runs the kernel into ``out`` (contiguous float32, every stored pixel written);
        ``residual``, shaped and laid out as ``out``, is added to every value before the ReLU."""
        _library_for(input=flat, out=out, residual=residual)
        if flat.numel() < self.input_numel or out.numel() != self.output_numel:
            raise TypeError(
                f"the native conv takes {self.input_numel} input and {self.output_numel} output "
                f"floats; got {flat.numel()} and {out.numel()}"
            )
        if residual is not None and residual.shape != out.shape:
            raise TypeError(
                f"the native kernel takes a residual shaped as out {tuple(out.shape)}; got "
                f"{tuple(residual.shape)}"
            )
        failed = self._function(
            flat.data_ptr(), *self._head, _address(residual), out.data_ptr(), *self._tail
        )
        if failed == 2:
            raise ValueError("the native conv's taps shift rows or columns by 64 or more")
        if failed:
            raise MemoryError("groupsparse's native CPU kernel could not allocate its scratch")
        return out


def grouped_gemm(
    flat: torch.Tensor,
    offsets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    residual: torch.Tensor | None = None,
    **sizes: Any,
) -> torch.Tensor:
    """One call of the conv kernel (``ConvCall``'s arguments; ``sizes`` are its keywords):
    ``ConvCall(offsets, weight, bias, **sizes)(flat, out, residual)``."""
    return ConvCall(offsets, weight, bias, **sizes)(flat, out, residual)


class LinearCall:
    """The native linear kernel for one layer: its constant tensors checked once, then each
    call passes only x and out.

    ``columns`` int64 ``(groups, k)``; ``weight`` contiguous float32 ``(groups, ceil(G / 16), k,
    16)``, packed per block of 16 features with zero rows past G (``cpu.blocked_linear_weight``
    packs a ``(groups, G, k)`` weight so); ``chunk`` tokens per work item. The tensors are
    kept alive by the call."""

    def __init__(
        self,
        columns: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        group_rows: int,
        relu: bool,
        chunk: int = 64,
    ) -> None:
        groups, kept = columns.shape if columns.dim() == 2 else (0, 0)
        loaded = _library_for(weight=weight, bias=bias)
        if columns.dtype != torch.int64 or not columns.is_contiguous() or columns.dim() != 2:
            raise TypeError(
                f"the native linear kernel takes contiguous int64 columns (groups, k); got "
                f"{columns.dtype} of shape {tuple(columns.shape)}"
            )
        if weight.shape != (groups, -(-group_rows // 16), kept, 16):
            raise TypeError(
                f"the native linear kernel takes weights packed as ({groups}, "
                f"{-(-group_rows // 16)}, {kept}, 16); got {tuple(weight.shape)}"
            )
        if bias is not None and bias.numel() != groups * group_rows:
            raise TypeError(f"bias must have {groups * group_rows} values; got {bias.numel()}")
        self.tensors = (columns, weight, bias)
        self.features = groups * group_rows
        # x needs more columns than the largest kept one (read unchecked by the kernel)
        self.needed = int(columns.max()) + 1 if columns.numel() else 0
        if columns.numel() and int(columns.min()) < 0:
            raise IndexError("the native linear kernel takes columns >= 0")
        self._function = loaded.gs_grouped_linear_f32
        self._head = (columns.data_ptr(), weight.data_ptr(), _address(bias))
        self._tail = (groups, group_rows, kept, chunk, int(relu))

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Runs the kernel into ``out``: ``x`` (tokens, K) and ``out`` (tokens, groups*G),
        contiguous float32."""
        _library_for(input=x, out=out)
        if x.dim() != 2 or out.shape != (x.shape[0], self.features) or x.shape[1] < self.needed:
            raise TypeError(
                f"the native linear kernel takes x (tokens, K >= {self.needed}) and out "
                f"(tokens, {self.features}); got {tuple(x.shape)} and {tuple(out.shape)}"
            )
        self._function(
            x.data_ptr(), *self._head, out.data_ptr(), x.shape[0], x.shape[1], *self._tail
        )
        return out


def grouped_linear(
    x: torch.Tensor,
    columns: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    relu: bool,
    chunk: int = 64,
) -> torch.Tensor:
    """One call of the linear kernel: ``LinearCall(columns, weight, bias, ...)(x, out)``, with
    G read off ``out`` ((tokens, groups * G))."""
    groups = columns.shape[0] if columns.dim() == 2 else 0
    if out.dim() != 2 or not groups or out.shape[1] % groups:
        raise TypeError(
            f"the native linear kernel takes x (tokens, K) and out (tokens, groups * G) with "
            f"{groups} groups; got {tuple(x.shape)} and {tuple(out.shape)}"
        )
    call = LinearCall(columns, weight, bias, group_rows=out.shape[1] // groups, relu=relu,
                      chunk=chunk)  # fmt: skip
    return call(x, out)


def max_pool2d(
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Runs the max-pool kernel into ``out``: ``x`` ``(..., H, W)`` and ``out`` ``(..., OH,
    OW)``, contiguous float32 with the same leading dimensions (``cpu.max_pool2d`` sizes it)."""
    loaded = _library_for(input=x, out=out)
    if x.dim() < 2 or out.shape[:-2] != x.shape[:-2]:
        raise TypeError(
            f"the native max-pool takes x (..., H, W) and out (..., OH, OW) with the same "
            f"leading dimensions; got {tuple(x.shape)} and {tuple(out.shape)}"
        )
    planes = math.prod(out.shape[:-2])
    loaded.gs_max_pool2d_f32(
        x.data_ptr(), out.data_ptr(), planes, x.shape[-2], x.shape[-1], out.shape[-2],
        out.shape[-1], *kernel, *stride, *padding, *dilation,
    )  # fmt: skip
    return out


def pad2d(
    x: torch.Tensor, out: torch.Tensor, *, padding: tuple[int, int, int, int]
) -> torch.Tensor:
    """Zero-pads ``x`` ``(..., H, W)`` into ``out`` ``(..., top + H + bottom, left + W +
    right)``, both contiguous float32 with the same leading dimensions; ``padding`` is
    ``(top, bottom, left, right)``, none negative. Every element of ``out`` is written."""
    loaded = _library_for(input=x, out=out)
    top, bottom, left, right = padding
    height, width = x.shape[-2:] if x.dim() >= 2 else (0, 0)
    if (
        x.dim() < 2
        or min(padding) < 0
        or out.shape != (*x.shape[:-2], top + height + bottom, left + width + right)
    ):
        raise TypeError(
            f"the native pad takes x (..., H, W), padding (top, bottom, left, right) >= 0 and out "
            f"(..., top + H + bottom, left + W + right); got {tuple(x.shape)}, {padding} and "
            f"{tuple(out.shape)}"
        )
    planes = math.prod(x.shape[:-2])
    loaded.gs_pad2d_f32(x.data_ptr(), out.data_ptr(), planes, height, width, *padding)
    return out
