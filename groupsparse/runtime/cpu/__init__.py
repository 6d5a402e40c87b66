"""The CPU backend: the C++ kernels on oneDNN's brgemm (``extension.py``, sources in
``csrc/``) and the torch-ops kernels (``torch_ops.py``). Which runs a layer is the compiler's
choice, from the kernel registry (``runtime/kernels.py``)."""

from . import extension, torch_ops

__all__ = ["extension", "torch_ops"]
