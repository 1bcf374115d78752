"""rSkip's recursion of norms as one Triton kernel for the forward and one for the backward (CUDA).

For one sublayer, with ``x`` its input, ``f = F(x)`` and λ norms ``N1..Nλ`` over the last dimension C::

    h1 = x + f;  Gi = Ni(hi);  h(i+1) = Gi + x;  y = G(λ)

The forward kernel reads ``x`` and ``f`` once and writes ``y`` and, per row and norm, the mean and 1/std (2λ floats a
row): λ norms for the memory traffic of one. Autograd keeps ``x``, ``f`` and those statistics, the activation memory
of one Post-LN. The backward kernel reads ``x``, ``f`` and ``dy`` once, rebuilds every norm input from the saved
statistics (no reductions, O(λ²) element-wise work in registers) and writes ``dx``, ``df`` and per-program partial
sums of the weight and bias gradients (summed by one ``torch.sum``).

Rounding follows the plain loop of ``nn.LayerNorm`` / ``nn.RMSNorm`` modules: the statistics and the normalization in
float32 (float64 for float64 inputs), ``x + f`` in the inputs' promoted dtype, every norm output in ``out_dtype`` (the
stream's dtype, or float32 where autocast runs norms in float32, as on CUDA), ``G + x`` promoted again. So the kernels
give the loop's numbers up to the order of the float32 sums.

This file is imported lazily by ``residual.py``, inside ``try``: where Triton is absent the import fails and the
PyTorch path runs. Triton's own import sits in a ``try`` block too, so that transformers' remote-code import check
(``dynamic_module_utils.get_imports`` skips ``try`` blocks) never asks for Triton. It runs on CPU tensors only in
Triton's interpreter (``TRITON_INTERPRET=1`` set before Triton is imported), which the tests use.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as error:  # residual.py catches this and keeps the PyTorch path
    raise ImportError("the Triton recursive norm needs Triton (pip install triton)") from error

MAX_BLOCK_ELEMENTS = 16384
"""The largest ``next_pow2(λ) * next_pow2(C)`` the kernels take: the backward keeps a ``(next_pow2(λ), C)`` float32
accumulator for the weights and one for the biases in registers (e.g. C <= 8192 at λ = 2, C <= 4096 at λ = 3 or 4).
Larger shapes take the PyTorch path."""


@triton.jit
def _recursive_norm_fwd(
    X, F, W, B, Y, MEAN, RSTD,
    n_rows, n_cols, stride_x, stride_f, stride_y,
    EPS: tl.constexpr, NUM_NORMS: tl.constexpr, RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr, SUM_DTYPE: tl.constexpr, STREAM_DTYPE: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One row per program: ``y = G(λ)`` and each norm's mean and 1/std (``MEAN``, ``RSTD``: ``(λ, n_rows)``)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
    f = tl.load(F + row * stride_f + cols, mask=mask, other=0.0).to(ACC)
    h = (x + f).to(SUM_DTYPE).to(ACC)  # rounded as `x + f` is in PyTorch
    for i in tl.static_range(NUM_NORMS):
        if RMS:
            centered = h
        else:
            mean = tl.sum(h, axis=0) / n_cols
            centered = tl.where(mask, h - mean, 0.0)
            tl.store(MEAN + i * n_rows + row, mean)
        var = tl.sum(centered * centered, axis=0) / n_cols
        rstd = 1.0 / tl.sqrt(var + EPS[i])
        tl.store(RSTD + i * n_rows + row, rstd)
        g = centered * rstd
        if HAS_WEIGHT:
            g = g * tl.load(W + i * n_cols + cols, mask=mask, other=0.0).to(ACC)
        if HAS_BIAS:
            g = g + tl.load(B + i * n_cols + cols, mask=mask, other=0.0).to(ACC)
        g = g.to(Y.dtype.element_ty).to(ACC)
        if i + 1 < NUM_NORMS:
            h = (g + x).to(STREAM_DTYPE).to(ACC)
    tl.store(Y + row * stride_y + cols, g.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _recursive_norm_bwd(
    DY, X, F, W, B, MEAN, RSTD, DX, DF, DW, DB,
    n_rows, n_cols, stride_dy, stride_x, stride_f, stride_dx, stride_df,
    NUM_NORMS: tl.constexpr, RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    SUM_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, STREAM_DTYPE: tl.constexpr, ACC: tl.constexpr,
    BLOCK: tl.constexpr, NORMS_BLOCK: tl.constexpr,
):
    """Rows ``pid, pid + programs, ...``: ``dx``, ``df``, and this program's partial ``dW``, ``dB``
    (``(programs, λ, C)``).

    The ``*_DTYPE`` are the forward's rounding points (see :func:`recursive_norm_forward`).
    """
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    norm_ids = tl.arange(0, NORMS_BLOCK)
    dw_acc = tl.zeros((NORMS_BLOCK, BLOCK), dtype=ACC)
    db_acc = tl.zeros((NORMS_BLOCK, BLOCK), dtype=ACC)
    for row_i32 in range(pid, n_rows, programs):
        row = tl.cast(row_i32, tl.int64)
        x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(ACC)
        f = tl.load(F + row * stride_f + cols, mask=mask, other=0.0).to(ACC)
        grad = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(ACC)
        dx = tl.zeros((BLOCK,), dtype=ACC)
        for i in tl.static_range(NUM_NORMS - 1, -1, -1):
            # rebuild the input of norm i from the saved statistics: no reductions
            h = (x + f).to(SUM_DTYPE).to(ACC)
            for k in tl.static_range(i):
                if RMS:
                    g = h * tl.load(RSTD + k * n_rows + row)
                else:
                    g = (h - tl.load(MEAN + k * n_rows + row)) * tl.load(RSTD + k * n_rows + row)
                if HAS_WEIGHT:
                    g = g * tl.load(W + k * n_cols + cols, mask=mask, other=0.0).to(ACC)
                if HAS_BIAS:
                    g = g + tl.load(B + k * n_cols + cols, mask=mask, other=0.0).to(ACC)
                h = (g.to(OUT_DTYPE).to(ACC) + x).to(STREAM_DTYPE).to(ACC)
            rstd = tl.load(RSTD + i * n_rows + row)
            if RMS:
                xhat = tl.where(mask, h * rstd, 0.0)
            else:
                xhat = tl.where(mask, (h - tl.load(MEAN + i * n_rows + row)) * rstd, 0.0)
            if HAS_WEIGHT:
                wdy = grad * tl.load(W + i * n_cols + cols, mask=mask, other=0.0).to(ACC)
                dw_acc += tl.where(norm_ids[:, None] == i, (grad * xhat)[None, :], 0.0)
            else:
                wdy = grad
            if HAS_BIAS:
                db_acc += tl.where(norm_ids[:, None] == i, grad[None, :], 0.0)
            c1 = tl.sum(xhat * wdy, axis=0) / n_cols
            if RMS:
                grad = (wdy - xhat * c1) * rstd
            else:
                c2 = tl.sum(wdy, axis=0) / n_cols
                grad = (wdy - (xhat * c1 + c2)) * rstd
            grad = tl.where(mask, grad, 0.0)
            dx += grad  # h1 = x + f and h(i+1) = Gi + x: x receives every norm input's gradient
        tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=mask)
        tl.store(DF + row * stride_df + cols, grad.to(DF.dtype.element_ty), mask=mask)
    block_mask = (norm_ids[:, None] < NUM_NORMS) & mask[None, :]
    offsets = pid * NUM_NORMS * n_cols + norm_ids[:, None] * n_cols + cols[None, :]
    if HAS_WEIGHT:
        tl.store(DW + offsets, dw_acc, mask=block_mask)
    if HAS_BIAS:
        tl.store(DB + offsets, db_acc, mask=block_mask)


_TL_DTYPES = {
    torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64,
}


def supports(num_norms: int, width: int, *dtypes: torch.dtype) -> bool:
    """Whether the kernels take λ = ``num_norms`` norms over ``width`` features (see :data:`MAX_BLOCK_ELEMENTS`) with
    inputs of ``dtypes`` (float32, float16, bfloat16, float64)."""
    limit = MAX_BLOCK_ELEMENTS // 2 if torch.float64 in dtypes else MAX_BLOCK_ELEMENTS  # float64 accumulators
    fits = triton.next_power_of_2(num_norms) * triton.next_power_of_2(width) <= limit
    return fits and all(dtype in _TL_DTYPES for dtype in dtypes)


def _accumulator(x: torch.Tensor, f: torch.Tensor, out_dtype: torch.dtype) -> torch.dtype:
    """What the kernels compute in: float64 where anything is float64, else float32 (as PyTorch's norms do)."""
    return torch.float64 if torch.float64 in (x.dtype, f.dtype, out_dtype) else torch.float32


def _rounding(x: torch.Tensor, f: torch.Tensor, out_dtype: torch.dtype) -> dict:
    """The forward's rounding points: ``x + f`` in their promoted dtype, ``G + x`` in ``out_dtype`` promoted with x's;
    and the dtype computed in between (``ACC``)."""
    return dict(SUM_DTYPE=_TL_DTYPES[torch.promote_types(x.dtype, f.dtype)],
                STREAM_DTYPE=_TL_DTYPES[torch.promote_types(out_dtype, x.dtype)],
                ACC=_TL_DTYPES[_accumulator(x, f, out_dtype)])


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


def _backward_programs(rows: int, device: torch.device) -> int:
    """Persistent programs for the backward: a few per multiprocessor on a GPU, few in the (slow) interpreter."""
    if device.type == "cuda":
        return max(1, min(rows, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(rows, 4))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``(..., C)`` as ``(rows, C)`` with unit stride along C (a view when possible)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def recursive_norm_forward(
    x: torch.Tensor,
    f: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: tuple[float, ...],
    rms: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Runs the forward kernel.

    Args:
        x, f: ``(..., C)``, the skip and the branch output (same shape, any float dtypes).
        weight, bias: ``(λ, C)`` (the norms' parameters stacked) or None.
        eps: each norm's epsilon.
        rms: RMSNorm (no centring) instead of LayerNorm.
        out_dtype: the dtype every norm output is rounded to, and the dtype of ``y``.

    Returns:
        ``y`` of the shape of ``x``; ``mean`` and ``rstd``, ``(λ, rows)`` in float32 (float64 for float64 inputs;
        ``mean`` is empty for RMSNorm).
    """
    num_norms, width = len(eps), x.shape[-1]
    x2, f2 = _rows(x), _rows(f)
    rows = x2.shape[0]
    y = torch.empty((rows, width), dtype=out_dtype, device=x.device)
    rstd = torch.empty((num_norms, rows), dtype=_accumulator(x, f, out_dtype), device=x.device)
    mean = rstd.new_empty((0,) if rms else (num_norms, rows))
    block = triton.next_power_of_2(width)
    if rows:
        _recursive_norm_fwd[(rows,)](
            x2, f2, x2 if weight is None else weight, x2 if bias is None else bias, y, rstd if rms else mean, rstd,
            rows, width, x2.stride(0), f2.stride(0), y.stride(0),
            EPS=tuple(float(e) for e in eps), NUM_NORMS=num_norms, RMS=rms, HAS_WEIGHT=weight is not None,
            HAS_BIAS=bias is not None, **_rounding(x, f, out_dtype), BLOCK=block, num_warps=_num_warps(block),
        )
    return y.view(x.shape), mean, rstd


def recursive_norm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    f: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    rms: bool,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Runs the backward kernel: ``dx``, ``df`` (dtypes of ``x``, ``f``), ``dweight``, ``dbias`` (their dtypes) or None.

    Takes the forward's inputs and statistics (``mean``, ``rstd``) and its ``out_dtype``; ``grad_y`` is ``(..., C)``.
    """
    num_norms, width = rstd.shape[0], x.shape[-1]
    x2, f2 = _rows(x), _rows(f)
    dy = _rows(grad_y)
    rows = x2.shape[0]
    dx = torch.empty((rows, width), dtype=x.dtype, device=x.device)
    df = torch.empty((rows, width), dtype=f.dtype, device=x.device)
    programs = _backward_programs(rows, x.device)
    acc = _accumulator(x, f, out_dtype)
    partial_w = torch.empty((programs, num_norms, width), dtype=acc, device=x.device) if weight is not None else None
    partial_b = torch.empty((programs, num_norms, width), dtype=acc, device=x.device) if bias is not None else None
    block = triton.next_power_of_2(width)
    if rows:
        _recursive_norm_bwd[(programs,)](
            dy, x2, f2, x2 if weight is None else weight, x2 if bias is None else bias, rstd if rms else mean, rstd,
            dx, df, dx if partial_w is None else partial_w, dx if partial_b is None else partial_b,
            rows, width, dy.stride(0), x2.stride(0), f2.stride(0), dx.stride(0), df.stride(0),
            NUM_NORMS=num_norms, RMS=rms, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
            **_rounding(x, f, out_dtype), OUT_DTYPE=_TL_DTYPES[out_dtype], BLOCK=block,
            NORMS_BLOCK=triton.next_power_of_2(num_norms), num_warps=_num_warps(block),
        )
    elif partial_w is not None or partial_b is not None:
        for partial in (partial_w, partial_b):
            if partial is not None:
                partial.zero_()
    grad_w = partial_w.sum(0).to(weight.dtype) if partial_w is not None else None
    grad_b = partial_b.sum(0).to(bias.dtype) if partial_b is not None else None
    return dx.view(x.shape), df.view(f.shape), grad_w, grad_b


INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Whether Triton runs its interpreter (kernels on CPU tensors, for tests); read once, as Triton does at import."""

__all__ = ["INTERPRETED", "MAX_BLOCK_ELEMENTS", "recursive_norm_backward", "recursive_norm_forward", "supports"]
