"""The worker of ``before_after``: run as ``python -c <this file's text>`` inside one source
tree, so that ``import groupsparse`` is that tree's. It reads one JSON request a line from
stdin and answers each with one line ``@@ <json>`` on stdout (anything else a library prints
there is ignored by the parent):

- ``{"model", "sparsity", "group_size", "threads"}``: build the model (seed 0; a model name,
  or one layer: ``conv:C,S``, ``linear:IN,OUT,TOKENS``), prune it
  group-wise (magnitude, one shot), ``compile_sparse`` it as a user would; answers how many
  layers were rewritten and the first outputs, so the parent can check both trees agree;
- ``{"time": N}``: N calls of the compiled model, one clock each; answers their ms;
- ``{"quit": true}``.

It uses only the public API that every compared commit has (``build_model``, ``prune``,
``compile_sparse``), so it can run in a tree older than this file.
"""

import copy
import json
import sys
import time

import torch

import groupsparse as gs
from groupsparse.models import build_model


def build(name):
    """A registered model, or one layer: "conv:C,S" (a 3x3 "same" conv, C channels, S x S
    image) or "linear:IN,OUT,TOKENS"."""
    kind, _, sizes = name.partition(":")
    if kind == "conv":
        channels, size = map(int, sizes.split(","))
        layer = torch.nn.Conv2d(channels, channels, 3, padding=1)
        return torch.nn.Sequential(layer).eval(), (torch.randn(1, channels, size, size),)
    if kind == "linear":
        features, out, tokens = map(int, sizes.split(","))
        layer = torch.nn.Linear(features, out)
        return torch.nn.Sequential(layer).eval(), (torch.randn(tokens, features),)
    return build_model(name)


def answer(payload):
    print("@@ " + json.dumps(payload), flush=True)


compiled, inputs = None, None
for line in sys.stdin:
    request = json.loads(line)
    if request.get("quit"):
        break
    if "model" in request:
        torch.set_num_threads(request["threads"])
        torch.manual_seed(0)
        model, inputs = build(request["model"])
        pruned = copy.deepcopy(model).eval()
        gs.prune(pruned, "group", request["sparsity"], group_size=request["group_size"])
        start = time.perf_counter()
        compiled = gs.compile_sparse(pruned, inputs)
        compile_s = time.perf_counter() - start
        with torch.inference_mode():
            out = compiled(*inputs)
            out = out if isinstance(out, torch.Tensor) else out[0]
            expected = pruned(*inputs)
            expected = expected if isinstance(expected, torch.Tensor) else expected[0]
        report = compiled.report
        answer({
            "rewritten": len(report.rewritten),
            "layers": len(report),
            "compile_s": round(compile_s, 1),
            "head": out.flatten()[:16].tolist(),
            "error": ((out - expected).norm() / expected.norm()).item(),
            "file": gs.__file__,
        })  # fmt: skip
    elif "time" in request:
        samples = []
        with torch.inference_mode():
            for _ in range(request["time"]):
                start = time.perf_counter()
                compiled(*inputs)
                samples.append((time.perf_counter() - start) * 1e3)
        answer({"ms": samples})
