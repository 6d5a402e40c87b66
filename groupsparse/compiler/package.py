"""Deployment: a compiled model as an AOTInductor package (``.pt2``), and loading one.

``export_package`` runs ``torch.export`` on a compiled model and
``torch._inductor.aoti_compile_and_package`` on the program: one file holding the model's
code compiled to a shared library and its weights (the packed group-sparse ones included).
The package calls groupsparse's operators (``groupsparse::conv2d``, ``groupsparse::linear``,
...) through the dispatcher, so the process that runs it must have them registered:
``import groupsparse`` does that, and no model code is needed.

``load_package`` loads one after checking that every custom operator it calls is defined in
this process, naming those that are not (torch itself stops at the first, with "Could not find
schema for groupsparse::conv2d").
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..runtime import ops  # noqa: F401  (registers torch.ops.groupsparse)

__all__ = ["export_package", "load_package", "package_operators"]

# operator namespaces every torch build defines
_TORCH_NAMESPACES = ("aten", "prims", "_c10d_functional", "c10d", "inductor")


def export_package(
    compiled: nn.Module, example_inputs: tuple[Any, ...], path: str | os.PathLike
) -> Path:
    """Write ``compiled`` (a ``compile_sparse`` result, or any exportable module) as an
    AOTInductor package at ``path`` (a ``.pt2`` file); returns the path. The package takes
    inputs of the example's shapes and dtypes.

    Example::

        >>> fast = gs.compile_sparse(model, (x,))
        >>> gs.export_package(fast, (x,), "model.pt2")
        >>> gs.load_package("model.pt2")(x)       # in any process that imports groupsparse
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"an AOTInductor package is a .pt2 file; got {str(path)!r}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    with torch.no_grad():
        program = torch.export.export(compiled, tuple(example_inputs))
        written = torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return Path(written)


def package_operators(path: str | os.PathLike) -> list[str]:
    """The custom operators (``namespace::name``, torch's own left out) a ``.pt2`` package
    calls, read from the AOTInductor programs' node lists inside the archive."""
    found: dict[str, None] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if "/aotinductor/" not in name or not name.endswith(".json"):
                continue
            try:
                nodes = json.loads(archive.read(name)).get("nodes", [])
            except (ValueError, AttributeError):
                continue  # a metadata file, not a node list
            for node in nodes:
                target = (node.get("node") or {}).get("target", "")
                if "::" in target and target.split("::")[0] not in _TORCH_NAMESPACES:
                    found[target.split(".")[0]] = None
    return list(found)


def _defined(operator: str) -> bool:
    namespace, name = operator.split("::", 1)
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def load_package(path: str | os.PathLike) -> Any:
    """Load an AOTInductor package written by ``groupsparse export`` / ``export_package``: a
    callable taking the example's inputs. Raises ``FileNotFoundError`` for a missing file and
    ``RuntimeError`` naming every operator the package calls that this process lacks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no AOTInductor package at {str(path)!r}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not an AOTInductor package (.pt2, a zip archive)")
    missing = [operator for operator in package_operators(path) if not _defined(operator)]
    if missing:
        ours = [operator for operator in missing if operator.startswith("groupsparse::")]
        others = [operator for operator in missing if operator not in ours]
        advice = []
        if ours:
            advice.append(
                f"{', '.join(ours)}: this groupsparse ({_version()}) does not define them; the "
                "package was written by another version: install that one, or export the model "
                "again with this one (`groupsparse export`)"
            )
        if others:
            advice.append(f"{', '.join(others)}: import the library that defines them first")
        raise RuntimeError(
            f"{str(path)!r} calls operators this process does not define: " + "; ".join(advice)
        )
    return torch._inductor.aoti_load_package(str(path))


def _version() -> str:
    from .. import __version__

    return __version__
