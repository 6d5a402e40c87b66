"""The CUDA backend on a GPU: same function as dense conv2d/linear of the masked weight, status
errors that say what to do, memory that stays flat over calls, and CUDA graph capture.

Skipped (by conftest.py) without a GPU or without the cuda extra.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groupsparse.runtime import cuda, kernels, reference
from groupsparse.runtime.geometry import conv_output_size
from groupsparse.runtime.weights import SparseWeights
from tests.sparsify import dense_from_groups, random_group_columns

DEVICE = "cuda"
# ||out - ref|| / ||ref|| against a float64 reference (DESIGN.md: 1e-4 float32, 1e-2 half)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}

# (batch, channels, height, width, groups, group_rows, kept, geometry)
CONV_CASES = [
    (1, 16, 14, 14, 4, 8, 36, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (2, 16, 14, 14, 4, 8, 36, (3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    (5, 32, 15, 13, 2, 16, 100, (3, 3, 2, 2, 1, 1, 1, 1, 1, 1)),
    (3, 64, 8, 8, 8, 32, 16, (1, 1, 1, 1, 0, 0, 0, 0, 1, 1)),
    (4, 64, 16, 16, 2, 64, 20, (1, 1, 2, 2, 0, 0, 0, 0, 1, 1)),
    (2, 3, 32, 32, 1, 64, 80, (7, 7, 2, 2, 3, 3, 3, 3, 1, 1)),
    (2, 8, 17, 19, 3, 5, 30, (5, 3, 1, 2, 2, 1, 0, 2, 2, 1)),
]
# (leading shape, in_features, groups, group_rows, kept)
LINEAR_CASES = [
    ((1,), 64, 2, 32, 16),
    ((7,), 96, 3, 16, 40),
    ((4, 128), 768, 24, 32, 192),
    ((2, 3, 5), 33, 1, 8, 17),
]


def _columns(groups: int, total: int, kept: int) -> torch.Tensor:
    return random_group_columns(groups, total, kept).to(DEVICE)


def _conv_problem(case, dtype, with_bias=True):
    batch, channels, height, width, groups, group_rows, kept, geometry = case
    x = torch.randn(batch, channels, height, width, device=DEVICE).to(dtype)
    weight = (torch.randn(groups, group_rows, kept, device=DEVICE) / kept**0.5).to(dtype)
    columns = _columns(groups, channels * geometry[0] * geometry[1], kept)
    bias = torch.randn(groups * group_rows, device=DEVICE).to(dtype) if with_bias else None
    return x, weight, columns, bias, geometry


def _conv_reference(x, weight, columns, bias, geometry, relu):
    kh, kw, sh, sw, top, bottom, left, right, dh, dw = geometry
    channels = x.shape[1]
    dense = dense_from_groups(weight.double(), columns, channels * kh * kw).view(
        -1, channels, kh, kw
    )
    out = F.conv2d(
        F.pad(x.double(), (left, right, top, bottom)),
        dense,
        None if bias is None else bias.double(),
        stride=(sh, sw),
        dilation=(dh, dw),
    )
    return out.relu() if relu else out


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    assert not out.isnan().any(), "NaN in the output (an element was not written?)"
    return ((out.double() - reference).norm() / reference.norm()).item()


def _poison_allocator(numel: int, dtype: torch.dtype) -> None:
    """Leave a NaN-filled block in the caching allocator so an unwritten output shows as NaN."""
    block = torch.full((numel,), float("nan"), dtype=dtype, device=DEVICE)
    del block


@pytest.fixture(autouse=True)
def _no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
@pytest.mark.parametrize("kernel", ["grouped_conv2d", "two_step_conv2d"])
def test_conv_matches_dense_conv_of_masked_weight(kernel, case, dtype, with_bias, relu):
    x, weight, columns, bias, geometry = _conv_problem(case, dtype, with_bias)
    out_h, out_w = conv_output_size(x.shape[2], x.shape[3], geometry)
    _poison_allocator(x.shape[0] * weight.shape[0] * weight.shape[1] * out_h * out_w, dtype)

    out = getattr(cuda, kernel)(x, SparseWeights(weight, columns, bias), geometry, relu)

    reference = _conv_reference(x, weight, columns, bias, geometry, relu)
    assert out.shape == reference.shape and out.dtype == dtype
    assert _relative_error(out, reference) < TOLERANCE[dtype]


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0]}-{c[1:]}")
@pytest.mark.parametrize("kernel", ["grouped_linear", "two_step_linear"])
def test_linear_matches_dense_linear_of_masked_weight(kernel, case, dtype, with_bias, relu):
    leading, in_features, groups, group_rows, kept = case
    x = torch.randn(*leading, in_features, device=DEVICE).to(dtype)
    weight = (torch.randn(groups, group_rows, kept, device=DEVICE) / kept**0.5).to(dtype)
    columns = _columns(groups, in_features, kept)
    bias = torch.randn(groups * group_rows, device=DEVICE).to(dtype) if with_bias else None
    _poison_allocator(x.numel() // in_features * groups * group_rows, dtype)

    out = getattr(cuda, kernel)(x, SparseWeights(weight, columns, bias), relu)

    dense = dense_from_groups(weight.double(), columns, in_features)
    reference = F.linear(x.double(), dense, None if bias is None else bias.double())
    reference = reference.relu() if relu else reference
    assert out.shape == reference.shape and out.dtype == dtype
    assert _relative_error(out, reference) < TOLERANCE[dtype]


def test_fused_kernel_runs_where_triton_is_installed():
    import importlib.util

    x = torch.randn(2, 8, device=DEVICE, dtype=torch.float16)
    weight = torch.randn(1, 16, 8, device=DEVICE, dtype=torch.float16)
    expected = importlib.util.find_spec("triton") is not None
    assert cuda.fused_ready(x, weight) == expected
    found, _ = kernels.candidates("grouped", "linear", "cuda", torch.float16)
    assert [k.name for k in found] == (["grouped", "two_step"] if expected else ["two_step"])


def test_float32_uses_tf32_only_when_torch_allows_it(monkeypatch):
    x = torch.randn(256, 2048, device=DEVICE)
    weight = torch.randn(4, 64, 1024, device=DEVICE)
    columns = _columns(4, 2048, 1024)
    reference = F.linear(x.double(), dense_from_groups(weight.double(), columns, 2048))

    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ieee = _relative_error(cuda.grouped_linear(x, SparseWeights(weight, columns, None)), reference)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    tf32 = _relative_error(cuda.grouped_linear(x, SparseWeights(weight, columns, None)), reference)

    assert ieee < 1e-5
    assert 1e-5 < tf32 < 1e-2  # TF32 keeps 10 mantissa bits: about 1e-3 here


def test_all_columns_pruned_leaves_bias_only():
    x = torch.randn(2, 8, 6, 6, device=DEVICE, dtype=torch.float16)
    weight = torch.empty(2, 4, 0, device=DEVICE, dtype=torch.float16)
    columns = torch.empty(2, 0, dtype=torch.int64, device=DEVICE)
    bias = torch.randn(8, device=DEVICE, dtype=torch.float16)

    out = cuda.grouped_conv2d(
        x, SparseWeights(weight, columns, bias), (3, 3, 1, 1, 1, 1, 1, 1, 1, 1), True
    )

    assert torch.equal(out, bias.relu().view(1, 8, 1, 1).expand(2, 8, 6, 6))


def test_runs_on_torchs_current_stream():
    x, weight, columns, bias, geometry = _conv_problem(CONV_CASES[2], torch.float16)
    expected = cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(out, expected)


def test_loop_reference_agrees_with_grouped():
    x, weight, columns, bias, geometry = _conv_problem(CONV_CASES[1], torch.float32)
    grouped = cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
    loop = reference.loop_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
    torch.testing.assert_close(grouped, loop, rtol=1e-5, atol=1e-5)


def test_memory_is_stable_over_repeated_calls():
    x, weight, columns, bias, geometry = _conv_problem(CONV_CASES[2], torch.float16)
    tokens = torch.randn(64, 768, device=DEVICE, dtype=torch.float16)
    linear_weight = torch.randn(24, 32, 192, device=DEVICE, dtype=torch.float16)
    linear_columns = _columns(24, 768, 192)
    for _ in range(3):  # first calls build the caches
        cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
        cuda.grouped_linear(tokens, SparseWeights(linear_weight, linear_columns, None), False)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()

    for _ in range(200):
        cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
        cuda.grouped_linear(tokens, SparseWeights(linear_weight, linear_columns, None), False)
    torch.cuda.synchronize()

    assert torch.cuda.memory_allocated() == before


def test_clear_caches_frees_memory_and_calls_still_work():
    x, weight, columns, bias, geometry = _conv_problem(CONV_CASES[2], torch.float16)
    expected = cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()

    cuda.clear_caches()

    assert torch.cuda.memory_allocated() < before
    torch.testing.assert_close(
        cuda.grouped_conv2d(x, SparseWeights(weight, columns, bias), geometry, True), expected
    )


@pytest.mark.parametrize(
    "case", [CONV_CASES[0], CONV_CASES[2]], ids=["one-image-strided", "batch-grouped"]
)
def test_cuda_graph_replay_matches_eager(case):
    x, weight, columns, bias, geometry = _conv_problem(case, torch.float16)
    tokens = torch.randn(3, 128, 768, device=DEVICE, dtype=torch.float16)
    linear_weight = torch.randn(24, 32, 192, device=DEVICE, dtype=torch.float16)
    linear_columns = _columns(24, 768, 192)

    def step(image, text):
        conv = cuda.grouped_conv2d(image, SparseWeights(weight, columns, bias), geometry, True)
        return conv, cuda.grouped_linear(
            text, SparseWeights(linear_weight, linear_columns, None), True
        )

    static_image, static_text = x.clone(), tokens.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            step(static_image, static_text)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = step(static_image, static_text)

    fresh_image, fresh_text = torch.randn_like(x), torch.randn_like(tokens)
    static_image.copy_(fresh_image)
    static_text.copy_(fresh_text)
    graph.replay()
    torch.cuda.synchronize()

    for replayed, eager in zip(static_outputs, step(fresh_image, fresh_text), strict=True):
        torch.testing.assert_close(replayed, eager)


def test_first_call_during_capture_says_to_warm_up():
    x, weight, columns, bias, geometry = _conv_problem(CONV_CASES[3], torch.float16)
    layer = SparseWeights(weight, columns, bias)
    cuda.grouped_conv2d(x, layer, geometry, False)  # kernels compiled
    groups, kept = columns.shape
    new_columns = _columns(groups, x.shape[1], kept)  # a 1x1 conv: one column per channel
    graph = torch.cuda.CUDAGraph()
    with (
        pytest.raises(cuda.CudaBackendError, match="run the model once"),
        torch.cuda.graph(graph),
    ):
        cuda.grouped_conv2d(x, layer._replace(columns=new_columns), geometry, False)


def test_cublas_failure_names_the_status_and_what_to_do():
    out = torch.empty(16, 16, device=DEVICE, dtype=torch.float16)
    operand = torch.empty(256, device=DEVICE, dtype=torch.float16)
    # lda < m: cuBLAS refuses it
    bad = cuda.StridedBatchedGemm(
        a_operand="gathered", b_operand="weight", transa=cuda.OP_N, transb=cuda.OP_N,
        m=16, n=16, k=16, lda=8, ldb=16, ldc=16, stride_a=0, stride_b=0, stride_c=0,
        batch_count=1,
    )  # fmt: skip
    stream = torch.cuda.current_stream().cuda_stream
    handle = cuda._RUNTIME.cublas_handle(out.device, stream)
    with pytest.raises(cuda.CudaBackendError, match="CUBLAS_STATUS_INVALID_VALUE.*groupsparse bug"):
        cuda._run_gemm(bad, {"gathered": operand, "weight": operand}, out, handle, None)


def test_driver_failure_names_the_error():
    from cuda.bindings import driver

    with pytest.raises(
        cuda.CudaBackendError, match="cuDeviceGet failed with CUDA_ERROR_INVALID_DEVICE"
    ):
        cuda._check_driver(driver.cuDeviceGet(10_000), "cuDeviceGet", "check CUDA_VISIBLE_DEVICES")


def test_wrong_inputs_raise_clear_errors():
    x = torch.randn(2, 8, device=DEVICE, dtype=torch.float16)
    weight = torch.randn(2, 4, 3, device=DEVICE, dtype=torch.float16)
    columns = _columns(2, 8, 3)
    with pytest.raises(ValueError, match="columns"):
        cuda.grouped_linear(x, SparseWeights(weight, columns[:, :2], None))
    with pytest.raises(ValueError, match="on cpu"):
        cuda.grouped_linear(x, SparseWeights(weight, columns.cpu(), None))
    with pytest.raises(IndexError, match="8 im2col columns"):
        cuda.grouped_linear(x, SparseWeights(weight, columns + 8, None))
    with pytest.raises(TypeError, match="float16"):
        cuda.grouped_linear(x.double(), SparseWeights(weight.double(), columns, None))
