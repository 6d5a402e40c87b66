"""The decode suite (issue 21.3): batch-1 greedy token generation with ``gs.sparsify_``
(layers swapped in place, transformers' ``generate()`` and KV cache as they are), against the
dense model, and against the memory-bandwidth bound.

    python -m benchmarks decode --threads 1        # GPT-2 and the Llama-style model, float32 and
                                                   # bfloat16, 50/75/90%
    python -m benchmarks decode --quick            # reduced models: checks the suite

Models (random weights from configs, no download): ``gpt2`` is GPT2LMHeadModel with
GPT2Config's defaults (124M parameters; its LM head is tied to the token embedding, so
``gs.prune`` leaves it unpruned and ``sparsify_`` dense), ``llama`` a LlamaForCausalLM from a
small LlamaConfig (``LLAMA``: hidden 1536, 16 layers, MLP 4096, 12 heads with 4 KV heads,
vocabulary 32000, untied head: 0.50B parameters). A spec may change config fields:
``llama:num_hidden_layers=2``.

For each model and sparsity the float32 model is pruned group-wise (magnitude, one shot,
G = ``--group-size``), then for each dtype the pruned model is converted in place and
``gs.sparsify_`` swaps its layers (``--decide``: "time" by default, each layer timed against
dense on its input from a one-token example, what decoding runs; "cost": the cost model), and
``gs.unsparsify_`` undoes it before the next dtype. Prompt ``--prompt`` random tokens, batch
1, ``--new-tokens`` greedy tokens (``min_new_tokens`` too, so that every run makes as many).

Measured, dense and sparse generate() in turns (``--runs`` each after a short untimed call of
each): decode tokens/s (the tokens after the first over the time from the first token to the
last, from a logits processor's clock: prefill excluded) and end-to-end tokens/s (all new
tokens over the whole generate() call). Bytes read per token: every weight the forward reads
(dense layers' weights and biases; sparse layers' kept packed weights, int64 kept columns and
bias; one row of each embedding; norms; a tied head reads the whole embedding matrix), not the
KV cache (recorded apart: its mean bytes per decode step) or activations. Bandwidth: the
median of ``--bandwidth-runs`` copies of a 512 MiB float32 tensor on ``--threads`` threads,
read plus written bytes over time. The bound is bandwidth / bytes per token tokens/s; each
variant's share of it is its decode tokens/s over that.

Check: the sparsified model's logits on the prompt against the masked model's (float32: the
masked float32 model, under 1e-4; bfloat16: no worse than 3x eager bfloat16's own error against
the masked float32 model: ``benchmarks.checks``).
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import groupsparse as gs
from groupsparse.layers import is_prunable

from ..checks import DTYPES, relative_error, tolerance, verdict
from ..results import ResultFile
from ..timing import OtherLoad

__all__ = ["LLAMA", "MODELS", "bandwidth", "build", "main", "weight_bytes_per_token"]

# about 0.50B parameters: 16 layers of 25M (attention with 4 of 12 heads for keys and values,
# a 4096-wide gated MLP) and two 49M vocabulary matrices (embedding, untied head)
LLAMA = {
    "hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16,
    "num_attention_heads": 12, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048,
}  # fmt: skip
MODELS = ("gpt2", "llama")
QUICK_MODELS = (
    "gpt2:n_layer=2,n_embd=256,n_head=4",
    (
        "llama:num_hidden_layers=2,hidden_size=512,intermediate_size=1024,"
        "num_attention_heads=8,num_key_value_heads=4,vocab_size=8000"
    ),
)
SPARSITIES = (0.5, 0.75, 0.9)
# issue 21's goals: sparse / dense decode tokens/s at 75%, (model, dtype) -> speed-up
GOALS = {("gpt2", "float32"): 1.6, ("llama", "float32"): 2.5, ("llama", "bfloat16"): 2.5}
GOAL_SPARSITY = 0.75
COPY_BYTES = 512 * 2**20


def _value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"llama:num_hidden_layers=2"`` -> ("llama", {"num_hidden_layers": 2})."""
    name, _, rest = spec.partition(":")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; models: {', '.join(MODELS)}")
    fields = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        fields[key.strip()] = _value(value.strip())
    return name, fields


def build(spec: str) -> nn.Module:
    """The float32 model of a spec, random weights, in eval mode."""
    import transformers

    name, fields = parse_spec(spec)
    if name == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**fields))
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**LLAMA, **fields}))
    return model.eval()


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one batch-1 decoding step reads (see the module docstring)."""
    total = 0
    for module in model.modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if isinstance(module, nn.Embedding):
            total += module.embedding_dim * module.weight.element_size()  # one row
        elif isinstance(module, gs.SparseLayer) or is_prunable(module):
            total += sum(t.numel() * t.element_size() for t in own)
        else:  # norms (and rotary tables, which are buffers: computed, not read, but small)
            total += sum(t.numel() * t.element_size() for t in own if t.is_floating_point())
    return total


def _kv_bytes_per_step(model: nn.Module, prompt: int, new: int, dtype: torch.dtype) -> int:
    """Mean bytes of KV cache one decoding step reads (keys and values of every layer over the
    positions so far)."""
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = hidden // config.num_attention_heads
    mean_positions = prompt + new / 2
    return int(2 * layers * heads * head_dim * mean_positions * dtype.itemsize)


def bandwidth(runs: int) -> dict[str, Any]:
    """The machine's copy bandwidth on torch's threads: (read + written bytes) / time of a
    ``COPY_BYTES`` float32 copy, median of ``runs``."""
    source = torch.rand(COPY_BYTES // 4)
    target = torch.empty_like(source)
    target.copy_(source)  # pages touched
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        target.copy_(source)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "copy_bytes": COPY_BYTES, "runs": runs, "median_s": median,
        "gb_per_s": 2 * COPY_BYTES / median / 1e9, "best_gb_per_s": 2 * COPY_BYTES / min(seconds) / 1e9,
    }  # fmt: skip


class _Clock:
    """A logits processor that notes when each new token's logits are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def _generate(model: nn.Module, prompt: torch.Tensor, new: int) -> dict[str, Any]:
    from transformers import LogitsProcessorList

    clock = _Clock()
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(
            prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
            logits_processor=LogitsProcessorList([clock]),
        )  # fmt: skip
        total = time.perf_counter() - start
    made = out.shape[1] - prompt.shape[1]
    if made != new or len(clock.times) != new:
        raise RuntimeError(f"generate() made {made} tokens, not {new}")
    return {
        "decode_tokens_per_s": (new - 1) / (clock.times[-1] - clock.times[0]),
        "end_to_end_tokens_per_s": new / total,
        "first_token_s": clock.times[0] - start,
        "tokens": out[0, prompt.shape[1] :].tolist(),
    }


def _time(models: dict[str, nn.Module], prompt: torch.Tensor, args) -> dict[str, dict]:
    """generate() of each model in turns (the order reversed every other turn), after one
    short untimed call each; the medians and every run's figures."""
    for model in models.values():  # warm-up: a short generate() of each
        _generate(model, prompt, min(4, args.new_tokens))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in models}
    order = list(models.items())
    for turn in range(args.runs):
        for name, model in order if turn % 2 == 0 else reversed(order):
            runs[name].append(_generate(model, prompt, args.new_tokens))
    results = {}
    for name, samples in runs.items():
        results[name] = {
            key: statistics.median(s[key] for s in samples)
            for key in ("decode_tokens_per_s", "end_to_end_tokens_per_s", "first_token_s")
        }
        results[name]["decode_tokens_per_s_runs"] = [s["decode_tokens_per_s"] for s in samples]
        results[name]["tokens"] = samples[-1]["tokens"]
    return results


def _logits(model: nn.Module, prompt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(prompt).logits.float()


def _prune(model: nn.Module, sparsity: float, group_size: int) -> tuple[nn.Module, list[str]]:
    """A pruned copy and the layers ``gs.prune`` left dense (the tied head), with why."""
    pruned = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gs.prune(pruned, "group", sparsity, group_size=group_size, criterion="magnitude")
    notes = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return pruned, notes


def run_model(spec: str, args, result: ResultFile, bound: dict[str, Any]) -> None:
    """Every dtype and sparsity of one model, recorded row by row."""
    name, fields = parse_spec(spec)
    torch.manual_seed(args.seed)
    dense32 = build(spec)
    vocab = dense32.config.vocab_size
    prompt = torch.randint(
        0, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(args.seed)
    )
    parameters = sum(p.numel() for p in dense32.parameters())
    dense = {
        dtype: dense32 if dtype == "float32" else copy.deepcopy(dense32).to(DTYPES[dtype])
        for dtype in args.dtypes
    }
    example = {"input_ids": prompt[:, :1]}  # one token: what a decoding step runs
    for sparsity in args.sparsities:
        pruned, prune_notes = _prune(dense32, sparsity, args.group_size)
        reference = _logits(pruned, prompt)  # the masked float32 model
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            pruned.to(dtype)
            eager_error = (
                None
                if dtype == torch.float32
                else relative_error(_logits(pruned, prompt), reference)
            )
            started = time.perf_counter()
            report = gs.sparsify_(
                pruned, example if args.decide == "time" else None, decide=args.decide
            )
            sparsify_s = time.perf_counter() - started
            error = relative_error(_logits(pruned, prompt), reference)
            check = verdict(error, tolerance(dtype_name, 1e-4, eager_error), "masked float32 model")
            if eager_error is not None:
                check["eager_error"] = eager_error
            with OtherLoad() as load:
                timed = _time({"dense": dense[dtype_name], "sparse": pruned}, prompt, args)
            bytes_dense = weight_bytes_per_token(dense[dtype_name])
            bytes_sparse = weight_bytes_per_token(pruned)
            record: dict[str, Any] = {
                "model": spec, "model_name": name, "config_fields": fields,
                "parameters": parameters, "dtype": dtype_name, "sparsity": sparsity,
                "group_size": args.group_size, "prune_notes": prune_notes,
                "decide": args.decide, "sparsify_s": sparsify_s,
                "layers": len(report), "rewritten": len(report.rewritten),
                "dense_layers": {row.name: row.reason for row in report if row.decision == "dense"},
                "check": check,
                "bytes_per_token": {"dense": bytes_dense, "sparse": bytes_sparse},
                "kv_cache_bytes_per_step": _kv_bytes_per_step(dense32, args.prompt, args.new_tokens, dtype),
                "dense": timed["dense"], "sparse": timed["sparse"],
                "same_tokens": timed["dense"]["tokens"] == timed["sparse"]["tokens"],
                "other_load": load.share,
            }  # fmt: skip
            for variant, read in (("dense", bytes_dense), ("sparse", bytes_sparse)):
                bound_tokens = bound["gb_per_s"] * 1e9 / read
                record[variant]["bound_tokens_per_s"] = bound_tokens
                record[variant]["share_of_bound"] = (
                    record[variant]["decode_tokens_per_s"] / bound_tokens
                )
            record["speedup"] = (
                timed["sparse"]["decode_tokens_per_s"] / timed["dense"]["decode_tokens_per_s"]
            )
            record["speedup_end_to_end"] = (
                timed["sparse"]["end_to_end_tokens_per_s"]
                / timed["dense"]["end_to_end_tokens_per_s"]
            )
            # the goals are for the models as specified, not reduced ones
            goal = (
                GOALS.get((name, dtype_name)) if sparsity == GOAL_SPARSITY and not fields else None
            )
            record["goal"] = goal and {"speedup": goal, "met": record["speedup"] >= goal}
            result.add(record)
            print(_line(record), flush=True)
            gs.unsparsify_(pruned)
        del pruned
        gc.collect()


def _line(record: dict[str, Any]) -> str:
    dense, sparse = record["dense"], record["sparse"]
    return (
        f"{record['model']} {record['dtype']} {record['sparsity']:.0%}: dense "
        f"{dense['decode_tokens_per_s']:.1f} tok/s ({dense['share_of_bound']:.0%} of bound), sparse "
        f"{sparse['decode_tokens_per_s']:.1f} tok/s ({sparse['share_of_bound']:.0%} of bound), "
        f"{record['speedup']:.2f}x; {record['rewritten']}/{record['layers']} layers sparse; "
        f"check {'passed' if record['check']['passed'] else 'FAILED'} "
        f"({record['check']['max_relative_error']:.1e})"
    )


def summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model, dtype and sparsity."""
    rows = []
    for record in records:
        if record.get("error"):
            rows.append({"model": record["model"], "error": record["error"]})
            continue
        dense, sparse, goal = record["dense"], record["sparse"], record.get("goal")
        rows.append({
            "model": record["model"], "dtype": record["dtype"], "sparsity": f"{record['sparsity']:.0%}",
            "dense tok/s": dense["decode_tokens_per_s"], "sparse tok/s": sparse["decode_tokens_per_s"],
            "speed-up": f"{record['speedup']:.2f}x",
            "end to end": f"{record['speedup_end_to_end']:.2f}x",
            "MB/token dense": record["bytes_per_token"]["dense"] / 1e6,
            "MB/token sparse": record["bytes_per_token"]["sparse"] / 1e6,
            "bound share dense": f"{dense['share_of_bound']:.0%}",
            "bound share sparse": f"{sparse['share_of_bound']:.0%}",
            "layers sparse": f"{record['rewritten']}/{record['layers']}",
            "goal (issue 21)": goal and f"{goal['speedup']}x " + ("met" if goal["met"] else "MISSED"),
            "check": record["check"]["passed"],
        })  # fmt: skip
    return rows


def markdown_table(records: list[dict[str, Any]], settings: dict[str, Any], bound: dict) -> str:
    from ..results import markdown_table as table

    header = (
        f"Batch 1, prompt {settings['prompt']} tokens, {settings['new_tokens']} new tokens, greedy; "
        f"{settings['threads']} thread(s); decode tokens/s (prefill excluded), median of "
        f"{settings['runs']} generate() calls in turns; group size {settings['group_size']}, "
        f"decide={settings['decide']!r}. Bound: copy bandwidth {bound['gb_per_s']:.1f} GB/s "
        "(read + written) / weight bytes read per token."
    )
    return "\n".join([header, "", *table(summary(records))]) + "\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks decode",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help=(
        f"check the suite: reduced models ({' '.join(QUICK_MODELS)}), 75%%, 8 new tokens, "
        "1 run; written under out/benchmarks/"
    ))  # fmt: skip
    parser.add_argument("--models", nargs="+", help=f"model specs (default: {' '.join(MODELS)})")
    parser.add_argument("--dtypes", nargs="+", choices=["float32", "bfloat16"],
                        default=["float32", "bfloat16"])  # fmt: skip
    parser.add_argument("--sparsities", nargs="+", type=float, help="default 0.5 0.75 0.9")
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--decide", choices=["time", "cost", "always"], default="time")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, help="greedy tokens per generate() (default 64)")
    parser.add_argument("--runs", type=int, help="timed generate() calls per variant (default 3)")
    parser.add_argument("--bandwidth-runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch's threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="results folder (default: by machine)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.models = args.models or list(QUICK_MODELS if args.quick else MODELS)
    args.sparsities = args.sparsities or ([0.75] if args.quick else list(SPARSITIES))
    args.new_tokens = args.new_tokens or (8 if args.quick else 64)
    args.runs = args.runs or (1 if args.quick else 3)
    for spec in args.models:
        parse_spec(spec)  # an unknown model fails here, before anything runs
    torch.set_num_threads(args.threads)
    settings = {
        key: getattr(args, key)
        for key in ("models", "dtypes", "sparsities", "group_size", "decide", "prompt",
                    "new_tokens", "runs", "bandwidth_runs", "threads", "seed", "quick")
    }  # fmt: skip
    settings.update(criterion="magnitude", batch=1, greedy=True, llama_config=LLAMA)
    result = ResultFile(
        "decode", argv, settings, threads=args.threads, out=args.out, quick=args.quick
    )
    bound = bandwidth(args.bandwidth_runs)
    result.data["bandwidth"] = bound
    print(f"decode: {', '.join(args.models)} x {args.sparsities} x {args.dtypes}, "
          f"{args.threads} thread(s); copy bandwidth {bound['gb_per_s']:.1f} GB/s; "
          f"writing {result.path}", flush=True)  # fmt: skip
    for spec in args.models:
        try:
            run_model(spec, args, result, bound)
        except Exception as error:  # noqa: BLE001 (recorded; the next model runs)
            import traceback

            traceback.print_exc()
            result.add({"model": spec, "error": f"{type(error).__name__}: {error}"})
    path = result.finish(summary(result.records), markdown_table(result.records, settings, bound))
    print(path.with_suffix(".md").read_text())
    print(f"wrote {path} and {path.with_suffix('.md')}")
    failed = [r for r in result.records if r.get("error") or r["check"]["passed"] is False]
    return 1 if failed else 0
