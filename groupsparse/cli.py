"""The ``groupsparse`` command. ``groupsparse demo`` is the main job: prune a model built from
code, compile it, check it computes the same function, and time it against dense.

The other subcommands are a thin layer over the Python API:

- ``prune MODEL --out FILE``: ``gs.prune``; FILE holds the masks.
- ``compile MODEL [--masks FILE] --out FILE``: ``gs.compile_sparse``; FILE holds what is
  needed to compile the model again (not the compiled module).
- ``inspect SAVED|MODEL [--time] [--html DIR]``: ``gs.inspect``.
- ``export MODEL [--masks FILE] --out FILE.pt2``: ``gs.compile_sparse``, then
  ``gs.export_package`` (``torch.export`` and AOTInductor): a package that any process runs
  after ``import groupsparse`` (``gs.load_package``), with no model code.

MODEL is a built-in name (``groupsparse.models.MODEL_NAMES``) or ``path/to/file.py:function``,
a function taking no argument that returns ``(model, example_inputs)``. Models are built
after ``torch.manual_seed(--seed)``, so a saved file rebuilds the same weights.

Saved files are ``torch.save`` dicts (loaded with ``weights_only=True``):
``{"format": "groupsparse.masks/1" or "groupsparse.compiled/1", "model": MODEL, "batch": int,
"seed": int, "masks": {parameter name: bool tensor}, "prune": {pattern, sparsity,
group_size, criterion, exclude} or None, "compile": {decide, kernel, min_speedup}}``
(``compile`` only in compiled files). ``inspect`` rebuilds the model, applies the masks and
compiles it with the saved options; with ``decide="time"`` the decisions are measured again
on the machine that runs ``inspect``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .runtime.kernels import names as kernel_names
from .timing import time_side_by_side

__all__ = ["COMPILED_FORMAT", "MASKS_FORMAT", "load_model", "main", "time_side_by_side"]


def _demo(args: argparse.Namespace) -> int:
    import groupsparse as gs
    from groupsparse.models import build_model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model, example = build_model(args.model, batch=args.batch)
    print(f"model: {args.model}, input {tuple(example[0].shape)}, {args.threads} threads")
    masks = gs.prune(
        model,
        pattern="group",
        sparsity=args.sparsity,
        group_size=args.group_size,
        exclude="first_last",
    )
    print(
        f"pruned {len(masks)} layers group-wise (G={args.group_size}) to {args.sparsity:.0%} sparsity"
    )
    fast = gs.compile_sparse(model, example)
    print(fast.report)
    fresh = tuple(torch.randn_like(x) if x.is_floating_point() else x for x in example)
    with torch.no_grad():
        expected, actual = model(*fresh), fast(*fresh)
    error = float((actual - expected).abs().max() / expected.abs().max())
    print(f"max relative error vs the masked eager model on fresh inputs: {error:.2e}")
    times = time_side_by_side(
        {"dense eager": lambda: model(*example), "groupsparse": lambda: fast(*example)}, args.runs
    )
    print(
        f"dense eager {times['dense eager']:.2f} ms, groupsparse {times['groupsparse']:.2f} ms: "
        f"{times['dense eager'] / times['groupsparse']:.2f}x (median of {args.runs}, side by side)"
    )
    return 0 if error < 1e-4 else 1


MASKS_FORMAT = "groupsparse.masks/1"
COMPILED_FORMAT = "groupsparse.compiled/1"


def _load_model_file(spec: str) -> tuple[torch.nn.Module, Any]:
    path, _, function = spec.rpartition(":")
    if not Path(path).is_file():
        raise SystemExit(
            f"groupsparse: {path} is not a file (MODEL is a built-in name or path/to/file.py:function)"
        )
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, function, None)):
        raise SystemExit(f"groupsparse: {path} has no function {function!r}")
    built = getattr(module, function)()
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module)):
        raise SystemExit(
            f"groupsparse: {spec} must return (model, example_inputs); got {type(built).__name__}"
        )
    return built


def load_model(spec: str, batch: int = 1, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, example inputs) for a MODEL argument: a built-in name or
    ``path/to/file.py:function`` (``batch`` applies to built-in models only)."""
    from groupsparse.models import MODEL_NAMES, build_model

    torch.manual_seed(seed)
    if spec.rpartition(":")[0].endswith(".py"):
        model, example = _load_model_file(spec)
    elif spec in MODEL_NAMES:
        model, example = build_model(spec, batch=batch)
    else:
        raise SystemExit(
            f"groupsparse: unknown model {spec!r}; built-in: {', '.join(MODEL_NAMES)}, or path/to/file.py:function"
        )
    return model.eval(), example


def _prune_settings(args: argparse.Namespace) -> dict[str, Any]:
    exclude = args.exclude
    if exclude is not None and len(exclude) == 1 and exclude[0] in ("first", "last", "first_last"):
        exclude = exclude[0]
    return {
        "pattern": args.pattern, "sparsity": args.sparsity, "group_size": args.group_size,
        "criterion": args.criterion, "exclude": exclude,
    }  # fmt: skip


def _compile_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"decide": args.decide, "kernel": args.kernel, "min_speedup": args.min_speedup}


def _prune(model: torch.nn.Module, settings: dict[str, Any]) -> dict[str, torch.Tensor]:
    import groupsparse as gs

    pattern_args = {"group_size": settings["group_size"]} if settings["pattern"] == "group" else {}
    return gs.prune(
        model, pattern=settings["pattern"], sparsity=settings["sparsity"], criterion=settings["criterion"],
        exclude=settings["exclude"], **pattern_args,
    )  # fmt: skip


def _load_saved(path: str) -> dict[str, Any]:
    saved = torch.load(path, weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") not in (MASKS_FORMAT, COMPILED_FORMAT):
        raise SystemExit(
            f"groupsparse: {path} is not a file written by `groupsparse prune` or `groupsparse compile`"
        )
    return saved


def _print_masks(masks: dict[str, torch.Tensor]) -> None:
    width = max((len(name) for name in masks), default=0)
    for name, mask in masks.items():
        print(
            f"  {name.ljust(width)}  {'x'.join(map(str, mask.shape)):>14}  kept {float(mask.float().mean()):.0%}"
        )


def _cmd_prune(args: argparse.Namespace) -> int:
    model, _ = load_model(args.model, args.batch, args.seed)
    settings = _prune_settings(args)
    masks = _prune(model, settings)
    print(
        f"pruned {len(masks)} layers of {args.model} ({settings['pattern']}, sparsity {settings['sparsity']:.0%}):"
    )
    _print_masks(masks)
    saved = {
        "format": MASKS_FORMAT,
        "model": args.model,
        "batch": args.batch,
        "seed": args.seed,
        "masks": masks,
        "prune": settings,
    }
    torch.save(saved, args.out)
    print(f"masks saved to {args.out}")
    return 0


def _masks_for(
    args: argparse.Namespace, model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(masks, prune settings or None): from --masks FILE, or by pruning with the options."""
    if args.masks is not None:
        saved = _load_saved(args.masks)
        return saved["masks"], saved["prune"]
    settings = _prune_settings(args)
    return _prune(model, settings), settings


def _cmd_compile(args: argparse.Namespace) -> int:
    import groupsparse as gs

    model, example = load_model(args.model, args.batch, args.seed)
    masks, prune_settings = _masks_for(args, model)
    settings = _compile_settings(args)
    compiled = gs.compile_sparse(model, example, masks=masks, **settings)
    print(compiled.report)
    saved = {
        "format": COMPILED_FORMAT, "model": args.model, "batch": args.batch, "seed": args.seed,
        "masks": masks, "prune": prune_settings, "compile": settings,
    }  # fmt: skip
    torch.save(saved, args.out)
    print(
        f"saved to {args.out} (model, masks and compile options; `groupsparse inspect {args.out}` reads it)"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import groupsparse as gs

    if not args.out.endswith(".pt2"):
        raise SystemExit(f"groupsparse: --out must name a .pt2 file; got {args.out!r}")
    model, example = load_model(args.model, args.batch, args.seed)
    example = example if isinstance(example, tuple) else (example,)
    masks, _ = _masks_for(args, model)
    compiled = gs.compile_sparse(model, example, masks=masks, **_compile_settings(args))
    print(compiled.report)
    path = gs.export_package(compiled, example, args.out)
    shapes = ", ".join(str(tuple(x.shape)) for x in example if isinstance(x, torch.Tensor))
    print(
        f"wrote {path}: an AOTInductor package taking inputs of shape {shapes}; run it with "
        f"`import groupsparse; model = groupsparse.load_package({str(path)!r})`"
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    import groupsparse as gs

    target = Path(args.target)
    if target.is_file() and target.suffix != ".py":
        saved = _load_saved(args.target)
        model, example = load_model(saved["model"], saved["batch"], saved["seed"])
        masks = saved["masks"]
        settings = saved.get("compile", _compile_settings(args))
        title = f"{saved['model']} (from {target.name})"
    else:
        model, example = load_model(args.target, args.batch, args.seed)
        masks = _prune(model, _prune_settings(args))
        settings = _compile_settings(args)
        title = args.target
    if args.time:
        settings = {**settings, "decide": "time"}
    compiled = gs.compile_sparse(model, example, masks=masks, **settings)
    inspection = gs.inspect(compiled, masks=masks, title=title)
    print(inspection)
    if args.html is not None:
        print(f"\nHTML report: {inspection.to_html(args.html)}")
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--batch", type=int, default=1, help="batch of the example inputs (built-in models)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="torch.manual_seed before building the model"
    )


def _add_prune_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pruning")
    group.add_argument(
        "--pattern",
        default="group",
        help="element, vector, block, group, filter or N:M (default: group)",
    )
    group.add_argument("--sparsity", type=float, default=0.75)
    group.add_argument("--group-size", type=int, default=32, help="rows per group (pattern group)")
    group.add_argument(
        "--criterion", default="magnitude", choices=("magnitude", "random"),
        help="taylor needs data and a loss: use gs.prune from Python",
    )  # fmt: skip
    group.add_argument(
        "--exclude", nargs="+", help="first, last, first_last, or layer names/globs to leave dense"
    )


def _add_compile_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compiling")
    group.add_argument(
        "--decide",
        default="time",
        choices=("time", "cost", "always"),
        help="how a layer is chosen for the rewrite (default: time)",
    )
    group.add_argument(
        "--kernel",
        default="grouped",
        choices=kernel_names(),
        help="a kernel of the registry (default: grouped, timed against the device's other)",
    )
    group.add_argument("--min-speedup", type=float, default=1.05)


def _add_compiled_model_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """What compile and export share: MODEL, --out, its --masks or how to prune it, how to
    compile it and how to build it."""
    parser.add_argument("model", help="a built-in model name or path/to/file.py:function")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument(
        "--masks", help="masks written by `groupsparse prune` (instead of the pruning options)"
    )
    _add_prune_options(parser)
    _add_compile_options(parser)
    _add_model_options(parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groupsparse", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="prune, compile, check and time a model built from code"
    )
    demo.add_argument(
        "--model", default="demo-cnn", help="a built-in model name (default: demo-cnn)"
    )
    demo.add_argument("--sparsity", type=float, default=0.75)
    demo.add_argument("--group-size", type=int, default=64)
    demo.add_argument("--batch", type=int, default=1)
    demo.add_argument("--threads", type=int, default=2)
    demo.add_argument("--runs", type=int, default=20)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    prune = commands.add_parser("prune", help="prune a model and save its masks")
    prune.add_argument("model", help="a built-in model name or path/to/file.py:function")
    prune.add_argument("--out", required=True, help="file to write the masks to (torch.save)")
    _add_prune_options(prune)
    _add_model_options(prune)
    prune.set_defaults(run=_cmd_prune)

    compile_ = commands.add_parser(
        "compile", help="prune (or load masks) and compile a model; save what inspect needs"
    )
    _add_compiled_model_options(
        compile_, out_help="file to write (torch.save: model, masks, compile options)"
    )
    compile_.set_defaults(run=_cmd_compile)

    export = commands.add_parser(
        "export", help="prune (or load masks), compile and write an AOTInductor package (.pt2)",
        description="Compile a MODEL and write it as an AOTInductor package: torch.export of "
        "the compiled model, compiled ahead of time with its weights. A process that imports "
        "groupsparse runs it with no model code: groupsparse.load_package(FILE). It takes "
        "inputs of the example's shapes (--batch).",
    )  # fmt: skip
    _add_compiled_model_options(export, out_help="the package to write (a .pt2 file)")
    export.set_defaults(run=_cmd_export)

    inspect = commands.add_parser(
        "inspect", help="per-layer table, graph after each pass, before/after diff, and an HTML report",
        description="Inspect a file from `groupsparse prune` or `compile`, or a MODEL pruned and "
        "compiled with the options below (which a compiled file's saved options replace).",
    )  # fmt: skip
    inspect.add_argument(
        "target",
        metavar="SAVED|MODEL",
        help="a saved file, a built-in model name or path/to/file.py:function",
    )
    inspect.add_argument(
        "--time",
        action="store_true",
        help="time each group-wise layer dense vs rewritten (compiles with --decide time)",
    )
    inspect.add_argument(
        "--html", metavar="DIR", help="write graph.svg, masks/*.png and index.html into DIR"
    )
    _add_prune_options(inspect)
    _add_compile_options(inspect)
    _add_model_options(inspect)
    inspect.set_defaults(run=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
