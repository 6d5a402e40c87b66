"""The C++ CPU kernels' build and its fallback: where they cannot be built or are turned off,
importing groupsparse warns once (or, when turned off, stays quiet) and compiled models give
the same numbers through the torch-ops kernel. Each case runs in a fresh interpreter, since
the extension is loaded once per process, at import."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from groupsparse.runtime.cpu import extension

# a small CNN compiled with the default kernel, against the masked eager model; prints the
# status, the kernels the compiler chose and the extension's warnings
CHECK = textwrap.dedent(
    """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch
        import groupsparse as gs
        from groupsparse.runtime.cpu import extension
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(16 * 36, 32),
        ).eval()
        gs.prune(model, pattern="group", sparsity=0.75, group_size=8)
        fast = gs.compile_sparse(model, torch.randn(1, 8, 6, 6), decide="always")
        x = torch.randn(3, 8, 6, 6)
        with torch.no_grad():
            assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-5)
    print(extension.status())
    print("kernels:", sorted({row.kernel for row in fast.report}))
    print("warnings:", [str(w.message) for w in caught if w.category is extension.NativeKernelWarning])
    """
)


def _run(tmp_path, **env) -> str:
    environment = {**os.environ, "GROUPSPARSE_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=environment, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_turned_off_by_the_environment(tmp_path):
    out = _run(tmp_path, GROUPSPARSE_NATIVE="0")
    assert "not in use (turned off by GROUPSPARSE_NATIVE=0)" in out
    assert "kernels: ['torch_ops']" in out
    assert "warnings: []" in out  # asked for: no warning


def test_a_failed_build_warns_once_and_falls_back(tmp_path):
    out = _run(tmp_path, CXX="false")  # a "compiler" that always fails
    assert "not in use (the build failed" in out
    assert "kernels: ['torch_ops']" in out
    warnings = out.splitlines()[-1]
    assert warnings.count("C++ CPU kernels are unavailable") == 1, warnings
    assert not list((tmp_path / "cache").glob("*/*.so"))  # nothing half-built left to load


@pytest.mark.skipif(extension.load() is None, reason=extension.status())
def test_builds_into_the_cache_and_loads_from_it(tmp_path):
    out = _run(tmp_path)
    assert "in use" in out and "kernels: ['grouped']" in out
    built = list((tmp_path / "cache").glob("groupsparse_cpu_*/groupsparse_cpu_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    assert "in use" in _run(tmp_path)  # the second process loads it, without building again
    assert built[0].stat().st_mtime_ns == stamp


@pytest.mark.skipif(extension.load() is None, reason=extension.status())
def test_float32_runs_everywhere_the_extension_loads():
    assert extension.brgemm_supported(torch.float32)
    assert not extension.brgemm_supported(torch.float64)
