"""groupsparse's benchmarks: one harness, one results schema, one command.

Run from a checkout (this package is not part of the wheel)::

    python -m benchmarks layers --quick        # per layer: dense vs each compiler kernel
    python -m benchmarks models --quick        # whole models vs eager, Inductor, OpenVINO
    python -m benchmarks gpu --dry-run         # the GPU suite's harness on this CPU
    python -m benchmarks accuracy --quick      # the pruning patterns' accuracy on digits
    python -m benchmarks decode --quick        # batch-1 generate(): dense vs gs.sparsify_
    python -m benchmarks zoo --quick           # transformers' architectures, pruned and compiled
    python -m benchmarks index                 # INDEX.md of every results folder, from the JSON

Every run writes one JSON file (``results.SCHEMA``: commit, dirty flag, command line, date,
CPU model and ISA, GPU, torch) and a Markdown table beside it, under
``benchmarks/results/<machine>/<suite>/`` (``--quick`` runs: ``out/benchmarks/...``, ignored
by git), then rewrites that folder's INDEX.md. See benchmarks/README.md.
"""

SUITES = ("layers", "models", "gpu", "accuracy", "zoo", "decode")
