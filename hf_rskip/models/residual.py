"""The residual schemes of Liu et al. (COLING 2020), in one place.

Every sublayer of every model in this package (self-attention, cross-attention, feed-forward, a
ResNet residual branch) is wrapped by a :class:`Residual` built here from the model config. Layers
call ``residual(x, branch)`` and never look at the scheme themselves, so adding a scheme means
adding one class below (and its test).

Notation: ``F`` is the sublayer (``branch``), ``x`` its input, ``N`` a normalization layer and
``λ`` is ``skip_lambda``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

RESIDUAL_SCHEMES: tuple[str, ...] = ("post_ln", "pre_ln", "xskip", "xskip_ln", "rskip_ln")
"""The scheme names accepted by ``residual_scheme`` in every config of this package."""

TEXT_NORMS: tuple[str, ...] = ("layer", "rms")
"""``residual_norm`` values for token sequences ``(B, T, C)``: LayerNorm or RMSNorm over C."""

IMAGE_NORMS: tuple[str, ...] = ("layer", "batch")
"""``residual_norm`` values for feature maps ``(B, C, H, W)``: ``layer`` normalizes over (C, H, W)
per sample with a per-channel affine (GroupNorm with one group); ``batch`` is BatchNorm2d."""

Branch = Callable[[torch.Tensor], torch.Tensor]


def build_norm(residual_norm: str, dim: int, *, kind: str = "text", eps: float = 1e-5) -> nn.Module:
    """Builds one normalization layer.

    Args:
        residual_norm: ``"layer"``, ``"rms"`` (text) or ``"batch"`` (images).
        dim: feature size C.
        kind: ``"text"`` for ``(B, T, C)`` inputs, ``"image"`` for ``(B, C, H, W)``.
        eps: the numerical epsilon of the norm.
    """
    if kind == "text":
        table = {"layer": lambda: nn.LayerNorm(dim, eps=eps), "rms": lambda: nn.RMSNorm(dim, eps=eps)}
    elif kind == "image":
        table = {"layer": lambda: nn.GroupNorm(1, dim, eps=eps), "batch": lambda: nn.BatchNorm2d(dim, eps=eps)}
    else:
        raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
    if residual_norm not in table:
        raise ValueError(f"residual_norm={residual_norm!r} is not supported for {kind}; accepted: {sorted(table)}")
    return table[residual_norm]()


DEFAULT_SKIP_LAMBDA: dict[str, int] = {"post_ln": 1, "pre_ln": 1, "xskip": 2, "xskip_ln": 2, "rskip_ln": 2}
"""λ when a config leaves ``skip_lambda`` unset (None): 2, the paper's choice, where the scheme has a λ; post_ln and
pre_ln have none and store 1."""


def check_residual_options(residual_scheme: object, skip_lambda: object, residual_norm: object, norms: tuple[str, ...]) -> None:
    """Raises ``ValueError`` naming the bad option, its value and what is accepted.

    ``skip_lambda=None`` stands for the scheme's default (:data:`DEFAULT_SKIP_LAMBDA`). post_ln and pre_ln have no λ:
    for them only None or 1 (what saved configs store) are accepted.
    """
    if residual_scheme not in RESIDUAL_SCHEMES:
        raise ValueError(f"residual_scheme={residual_scheme!r} is not a known scheme; accepted: {list(RESIDUAL_SCHEMES)}")
    if skip_lambda is None:
        skip_lambda = DEFAULT_SKIP_LAMBDA[residual_scheme]
    if isinstance(skip_lambda, bool) or not isinstance(skip_lambda, (int, float)):
        raise ValueError(f"skip_lambda={skip_lambda!r} must be a number (an integer >= 1 for 'rskip_ln', > 0 otherwise)")
    if not skip_lambda > 0 or skip_lambda != skip_lambda or skip_lambda == float("inf"):
        raise ValueError(f"skip_lambda={skip_lambda!r} must be a finite number > 0")
    if DEFAULT_SKIP_LAMBDA[residual_scheme] == 1 and skip_lambda != 1:
        with_lambda = [s for s, lam in DEFAULT_SKIP_LAMBDA.items() if lam != 1]
        raise ValueError(
            f"{residual_scheme} has no λ, but skip_lambda={skip_lambda!r} was given: leave skip_lambda unset (or 1) "
            f"for residual_scheme={residual_scheme!r}, or choose a scheme with a λ: {with_lambda}"
        )
    if residual_scheme == "rskip_ln" and (float(skip_lambda) != int(skip_lambda) or skip_lambda < 1):
        raise ValueError(
            f"skip_lambda={skip_lambda!r} is not valid for residual_scheme='rskip_ln': it counts the recursive "
            "normalizations, so it must be an integer >= 1 (1 is post_ln)"
        )
    if residual_norm not in norms:
        raise ValueError(f"residual_norm={residual_norm!r} is not supported here; accepted: {list(norms)}")


def normalize_skip_lambda(residual_scheme: str, skip_lambda: float | None) -> float | int:
    """The λ a scheme actually uses (after :func:`check_residual_options`): the scheme's default for None, 1 for
    post_ln and pre_ln (they have none), an int for rskip_ln (it counts norms)."""
    if skip_lambda is None or residual_scheme in ("post_ln", "pre_ln"):
        return DEFAULT_SKIP_LAMBDA[residual_scheme]
    if residual_scheme == "rskip_ln":
        return int(skip_lambda)
    return skip_lambda


def check_learn_lambda(residual_scheme: str, learn_skip_lambda: object) -> None:
    """A learned λ scales the skip, so only the scaled-skip schemes can learn it."""
    if not isinstance(learn_skip_lambda, bool):
        raise ValueError(f"learn_skip_lambda={learn_skip_lambda!r} must be True or False")
    if learn_skip_lambda and residual_scheme not in ("xskip", "xskip_ln"):
        raise ValueError(
            f"learn_skip_lambda=True is not valid for residual_scheme={residual_scheme!r}; accepted schemes: "
            "['xskip', 'xskip_ln'] (rskip_ln's λ counts norms and cannot be learned)"
        )


FP16_MAX_SKIP_GAIN: float = 256.0
"""The largest λ^k that :func:`fp16_overflow_risk` lets pass, a factor 3 below the smallest gain that overflowed
float16 in xskip models at initialization (about 800 for the text model, in the gradients; 5,000 for a ResNet
evaluated before its BatchNorm statistics settled; 20,000 for a ResNet in training mode)."""


def _unnormalized_chain(config) -> tuple[int, str]:
    """k, the most consecutive skip joins with no norm between them, and where they are.

    Text: every sublayer of a stack (2 per encoder layer, 3 per decoder layer): nothing normalizes the stream before
    the stack's end. ResNet: a down-sampling block's shortcut projects the normalized pre-activation, which restarts
    the stream at each stage; but BatchNorm in evaluation mode uses running statistics, and until they have settled
    (evaluation early in training) they normalize nothing, so then the chain runs through every block.
    """
    if hasattr(config, "blocks_per_stage"):
        n, depth = config.blocks_per_stage, config.depth
        if getattr(config, "block_norm", "batch") == "batch":
            k = n * len(config.hidden_sizes)
            return k, (f"all {k} blocks of depth {depth}, in evaluation before the BatchNorm running statistics "
                       "have settled")
        return n, f"{n} blocks per stage (depth {depth})"
    encoder = getattr(config, "encoder_layers", None) or getattr(config, "num_layers", 0)
    decoder = getattr(config, "decoder_layers", None) or getattr(config, "num_decoder_layers", None) or encoder
    if 3 * decoder >= 2 * encoder:
        return 3 * decoder, f"the decoder's {decoder} layers x 3 sublayers"
    return 2 * encoder, f"the encoder's {encoder} layers x 2 sublayers"


def fp16_overflow_risk(config) -> str | None:
    """Whether float16 (mixed precision ``fp16``, or a model cast to half) risks overflow with this config's scheme.

    ``xskip`` joins with ``λ·x + F(x)`` and no norm, so with λ > 1 the residual stream grows as λ^k over k consecutive
    joins; float16 ends at 65504 and the overflow becomes inf, then NaN (a NaN loss at every step: loss scaling cannot
    help). A learned λ is judged by its start, ``skip_lambda``. bfloat16 has float32's range and is not at risk.

    Args:
        config: a config of this package (``residual_scheme``, ``skip_lambda`` and its layer counts or depth).

    Returns:
        None where float16 is safe as far as the scheme goes; else a message naming the scheme, λ, k, the gain λ^k
        and what to do instead.
    """
    lam = config.skip_lambda
    if config.residual_scheme != "xskip" or lam is None or float(lam) <= 1.0:
        return None
    k, where = _unnormalized_chain(config)
    gain = float(lam) ** k
    if gain <= FP16_MAX_SKIP_GAIN:
        return None
    return (
        f"residual_scheme='xskip' with skip_lambda={lam} multiplies the residual stream by λ at {k} consecutive "
        f"joins with no normalization between them ({where}): a gain of λ^{k} = {gain:.3g}, more than float16 "
        f"holds (max 65504; xskip models overflowed to inf/NaN from a gain of about 800, this check allows "
        f"{FP16_MAX_SKIP_GAIN:g}). Use bf16 or fp32 instead of fp16, fewer layers, skip_lambda <= 1, or a scheme "
        "with a norm after the sum ('xskip_ln', 'rskip_ln')."
    )


class Residual(nn.Module):
    """Base class: combines the skip ``x`` with the branch ``F``.

    Subclasses set ``num_norms`` (how many norm layers they own, kept in ``self.norms``) and implement
    ``forward(x, branch)``, where ``branch`` computes F on whatever input the scheme feeds it.
    """

    num_norms: int = 0
    needs_final_norm: bool = False
    normalizes_branch_input: bool = False

    def __init__(self, make_norm: Callable[[], nn.Module], skip_lambda: float = 1.0, learn_lambda: bool = False) -> None:
        super().__init__()
        self.norms = nn.ModuleList(make_norm() for _ in range(self.num_norms))
        if learn_lambda:
            self.skip_lambda = nn.Parameter(torch.tensor(float(skip_lambda)))
        else:
            self.skip_lambda = float(skip_lambda)

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        lam = self.skip_lambda
        return f"skip_lambda={float(lam.detach()) if isinstance(lam, torch.Tensor) else lam}"


class PostLN(Residual):
    """``y = N(x + F(x))``: the original Transformer / Marian block (rskip_ln with λ = 1)."""

    num_norms = 1

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        return self.norms[0](x + branch(x))


class PreLN(Residual):
    """``y = x + F(N(x))``: the stack needs a final N (``needs_final_norm``)."""

    num_norms = 1
    needs_final_norm = True
    normalizes_branch_input = True

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        return x + branch(self.norms[0](x))


class XSkip(Residual):
    """``y = λ·x + F(x)``: scaled skip, no normalization (λ = 1 is the plain identity shortcut)."""

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        if isinstance(self.skip_lambda, float) and self.skip_lambda == 1.0:
            return x + branch(x)
        return self.skip_lambda * x + branch(x)


class XSkipLN(Residual):
    """``y = N(λ·x + F(x))``: the residual form of DeepNorm when λ = α."""

    num_norms = 1

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        return self.norms[0](self.skip_lambda * x + branch(x))


RECURSION_PATHS: tuple[str, ...] = ("auto", "loop", "fused", "triton")
"""How :class:`RSkipLN` runs its λ norms (its ``recursion`` attribute; a run-time choice, not saved with the model):

- ``loop``: the norm modules one after the other. Autograd keeps every norm's input, λ ``(B, T, C)`` tensors per
  sublayer where Post-LN keeps one.
- ``fused``: :class:`_RecursiveLayerNorm`, one autograd function over PyTorch's LayerNorm kernels that keeps one
  (LayerNorms with weight and bias only).
- ``triton``: :class:`_TritonRecursiveNorm`, one Triton kernel for the forward and one for the backward
  (``recursive_norm_triton.py``; LayerNorm or RMSNorm over the last dimension, on CUDA where Triton imports). It keeps
  what ``fused`` keeps and reads and writes each activation once instead of once per norm.
- ``auto`` (the default): the first path of :data:`AUTO_RECURSION` that applies to the call.

All paths give the loop's outputs and gradients (to float rounding) and second-order gradients."""

AUTO_RECURSION: dict[str, dict[str, tuple[str, ...]]] = {
    "cpu": {"eager": ("loop",), "compiled": ("loop",)},
    "cuda": {"eager": ("triton", "fused", "loop"), "compiled": ("loop",)},
}
"""What ``recursion="auto"`` runs, per device type, eager or under ``torch.compile``: the first path of the list that
applies (``fused`` only where gradients are needed; ``triton`` only where Triton imports and the shape fits). Other
devices run the loop. From measurements (``scripts/bench.py --quick --compile``, ratios to Post-LN; README, "What each
recursion path costs"):

- CPU, eager: the loop. λ = 2 training step +0.9 % and +1.3 % over Post-LN (two runs on a loaded 2-core CPU), where the
  fused function took +9.0 % and +4.8 % (and +4.4 % against the loop's -1.1 % on the idle machine): rebuilding the norm
  inputs in backward is a second pass over memory that the CPU pays in full. The fused function keeps the memory of
  Post-LN (training-step peak 1.0006x at λ = 2, 1.0012x at λ = 3, where the loop needs 1.074x and 1.149x): set
  ``recursion="fused"`` where memory is what runs out.
- CPU and CUDA, compiled: the loop. Inductor fuses it into its own kernels, and under compile the fused function keeps
  what the loop keeps (peak 1.076x at λ = 2 for both on the CPU: the joint graph shares the forward's norm outputs with
  the backward's rebuilt ones), so it only adds work. The Triton kernels are not traced by torch.compile here.
- CUDA, eager: the Triton kernels (the memory of Post-LN; one read and one write of each activation for all λ norms,
  where the loop launches λ norm kernels and λ sums each way), else the fused function: memory of Post-LN at a cost in
  time (H100, bf16, the quick sizes: +21 % over Post-LN at λ = 2 where the loop took +10 %). The Triton kernels have
  not run on a GPU here: checked through Triton's interpreter on CPU, and compiled for sm_80 / sm_90 without one.
"""

_FLOAT32_NORMS_UNDER_AUTOCAST: dict[str, bool] = {"cpu": False}
"""Whether autocast on a device type runs layer_norm / rms_norm in float32 (ATen's AT_FORALL_FP32 list: CUDA and,
by default here, any other device) or in the input's dtype (CPU autocast has no norms in its float32 list)."""

class _TritonKernels(NamedTuple):
    """What ``recursive_norm_triton.py`` offers (see there)."""

    interpreted: bool
    forward: Callable
    backward: Callable
    supports: Callable[..., bool]


_triton_kernels: _TritonKernels | bool | None = None  # False where they do not import; None: not tried yet


def _recursive_norm_triton() -> _TritonKernels | None:
    """The Triton kernels (``recursive_norm_triton.py``), imported on first use; None where Triton is absent."""
    global _triton_kernels
    if _triton_kernels is None:
        try:
            # a `from .module import` line, so that transformers copies the file with the model's remote code
            from .recursive_norm_triton import INTERPRETED, recursive_norm_backward, recursive_norm_forward, supports
        except Exception:  # no Triton (ImportError), or an install that does not load: the PyTorch paths run
            _triton_kernels = False
        else:
            _triton_kernels = _TritonKernels(INTERPRETED, recursive_norm_forward, recursive_norm_backward, supports)
    return _triton_kernels or None


def _norm_dtype(x: torch.Tensor, f: torch.Tensor) -> torch.dtype:
    """The dtype of every norm output in the loop: float32 where autocast runs norms in float32, else x + f's."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and _FLOAT32_NORMS_UNDER_AUTOCAST.get(device, True):
        return torch.float32
    return torch.promote_types(x.dtype, f.dtype)


def _recursive_norm_reference(
    x: torch.Tensor,
    f: torch.Tensor,
    weights: Sequence[torch.Tensor | None],
    biases: Sequence[torch.Tensor | None],
    eps: Sequence[float],
    rms: bool,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The loop of norms in functional form, with the fused paths' dtypes: what their second-order gradients
    differentiate."""
    shape = (x.shape[-1],)
    h = x + f
    for i, (weight, bias, epsilon) in enumerate(zip(weights, biases, eps)):
        if out_dtype == torch.float32:  # autocast's float32 norms cast input and parameters
            h = h.float()
            weight = weight.float() if weight is not None else None
            bias = bias.float() if bias is not None else None
        if rms:
            g = nn.functional.rms_norm(h, shape, weight, epsilon)
        else:
            g = nn.functional.layer_norm(h, shape, weight, bias, epsilon)
        if i + 1 < len(eps):
            h = g + x
    return g


def _second_order_backward(
    grad_out: torch.Tensor, inputs: Sequence[torch.Tensor | None], needs_grad: Sequence[bool], recompute: Callable
) -> list[torch.Tensor | None]:
    """Backward under ``create_graph=True``: the gradients of a recomputation of the loop, built with autograd, so that
    they are differentiable again (gradient penalties, Hessian-vector products). The kernels' own backward is not.

    The recomputation reads aliases of the inputs: ``f = F(x)`` depends on ``x``, and differentiating with respect to
    ``x`` itself would add the path through F (which autograd adds once more when it continues into F).
    """
    with torch.enable_grad():
        aliases = [t.view_as(t) if t is not None else None for t in inputs]
        out = recompute(*aliases)
    wanted = [t for t, need in zip(aliases, needs_grad) if need and t is not None]
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if need and t is not None else None for t, need in zip(aliases, needs_grad)]


class _RecursiveLayerNorm(torch.autograd.Function):
    """``G1 = LN1(x + f); Gi = LNi(G(i-1) + x); y = G(λ)`` with the activation memory of one LayerNorm.

    Autograd through the plain loop keeps every norm's input ``G(i-1) + x`` alive until backward: λ tensors of
    shape ``(B, T, C)`` per sublayer where Post-LN keeps one. This function keeps only ``f`` (``x`` is kept by the
    branch's first linear layer anyway, so saving it costs nothing) and the per-row mean and 1/std of every norm,
    and rebuilds the norm inputs in backward with the same kernels, so outputs and gradients are those of the loop
    (bit for bit on CPU for λ = 2; a different order of summing ``x``'s gradient terms for λ >= 3). Each norm uses its
    own epsilon. Under ``create_graph=True`` the backward differentiates a recomputation of the loop instead, so
    second-order gradients are right too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, eps: tuple[float, ...], *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        shape = [x.shape[-1]]
        g, mean, rstd = torch.ops.aten.native_layer_norm(x + f, shape, weights[0], biases[0], eps[0])
        stats = [mean, rstd]
        for weight, bias, epsilon in zip(weights[1:], biases[1:], eps[1:]):
            g, mean, rstd = torch.ops.aten.native_layer_norm(g + x, shape, weight, bias, epsilon)
            stats += [mean, rstd]
        ctx.eps = eps
        ctx.save_for_backward(x, f, *stats, *params)
        return g

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, f, *rest = ctx.saved_tensors
        count = len(ctx.eps)  # λ: two stats and two params per norm
        stats, params = rest[: 2 * count], rest[2 * count:]
        weights, biases = params[0::2], params[1::2]
        if torch.is_grad_enabled():  # create_graph=True
            needs = ctx.needs_input_grad
            grads = _second_order_backward(
                grad_out, [x, f, *params], [needs[0], needs[1], *needs[3:]],
                lambda x, f, *p: _recursive_norm_reference(x, f, p[0::2], p[1::2], ctx.eps, False, grad_out.dtype))
            return (grads[0], grads[1], None, *grads[2:])
        shape = [x.shape[-1]]
        # rebuild the norm inputs: inputs[0] = x + f, inputs[i] = LN_i(inputs[i-1]) + x
        inputs = [x + f]
        for i in range(count - 1):
            g = torch.ops.aten.native_layer_norm(inputs[-1], shape, weights[i], biases[i], ctx.eps[i])[0]
            inputs.append(g + x)
        grad_x = None
        grad_params: list[torch.Tensor | None] = [None] * (2 * count)
        grad = grad_out
        for i in reversed(range(count)):
            mask = [True, weights[i].requires_grad, biases[i].requires_grad]
            grad, grad_w, grad_b = torch.ops.aten.native_layer_norm_backward(
                grad, inputs[i], shape, stats[2 * i], stats[2 * i + 1], weights[i], biases[i], mask)
            grad_params[2 * i], grad_params[2 * i + 1] = grad_w, grad_b
            if i > 0:  # inputs[i] = G(i) + x: x receives this gradient too
                grad_x = grad if grad_x is None else grad_x + grad
        # inputs[0] = x + f
        grad_x = grad if grad_x is None else grad_x + grad
        return (grad_x, grad, None, *grad_params)


class _TritonRecursiveNorm(torch.autograd.Function):
    """The recursion as one Triton kernel each way (``recursive_norm_triton.py``): LayerNorm or RMSNorm, any λ.

    Keeps ``x``, ``f``, the stacked ``(λ, C)`` weights and biases and 2λ floats a row, as :class:`_RecursiveLayerNorm`
    does; under ``create_graph=True`` its backward differentiates a recomputation of the loop.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: tuple[float, ...], rms: bool, out_dtype: torch.dtype) -> torch.Tensor:
        y, mean, rstd = _recursive_norm_triton().forward(x, f, weight, bias, eps, rms, out_dtype)
        ctx.save_for_backward(x, f, weight, bias, mean, rstd)
        ctx.eps, ctx.rms, ctx.out_dtype = eps, rms, out_dtype
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, f, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            grads = _second_order_backward(
                grad_y, [x, f, weight, bias], ctx.needs_input_grad[:4],
                lambda x, f, w, b: _recursive_norm_reference(
                    x, f, [None] * len(ctx.eps) if w is None else w.unbind(), [None] * len(ctx.eps) if b is None
                    else b.unbind(), ctx.eps, ctx.rms, ctx.out_dtype))
            return (*grads, None, None, None)
        dx, df, dw, db = _recursive_norm_triton().backward(grad_y, x, f, weight, bias, mean, rstd, ctx.rms,
                                                           ctx.out_dtype)
        return dx, df, dw, db, None, None, None


class RSkipLN(Residual):
    """Recursive skip with normalization, F computed once and λ norms with their own parameters::

        G1 = N1(x + F(x));  Gi = Ni(G(i-1) + x) for i = 2..λ;  y = G(λ)

    ``recursion`` chooses how the λ norms run (:data:`RECURSION_PATHS`; ``"auto"`` by :data:`AUTO_RECURSION`): as the
    plain loop, or as one autograd function (PyTorch or Triton kernels) that keeps one norm input instead of λ, so
    that training memory stays that of Post-LN. The result is the same.
    """

    def __init__(self, make_norm: Callable[[], nn.Module], skip_lambda: float = 2, learn_lambda: bool = False) -> None:
        self.num_norms = int(skip_lambda)
        super().__init__(make_norm, skip_lambda, learn_lambda=False)
        self.recursion = "auto"

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        f = branch(x)
        path = self.recursion_path(x, f)
        if path == "fused":
            return self._fused(x, f)
        if path == "triton":
            return self._triton(x, f)
        g = self.norms[0](x + f)
        for norm in self.norms[1:]:
            g = norm(g + x)
        return g

    def recursion_path(self, x: torch.Tensor, f: torch.Tensor, *, compiled: bool | None = None) -> str:
        """The path a call with skip ``x`` and branch output ``f`` takes (``"loop"``, ``"fused"`` or ``"triton"``).

        Args:
            x: the skip, ``(..., C)``.
            f: the branch output F(x), same shape.
            compiled: whether the call is traced by ``torch.compile`` (None: ask ``torch.compiler.is_compiling()``).

        Raises:
            ValueError: ``recursion`` is not one of :data:`RECURSION_PATHS`, or names a path that cannot run this call.
        """
        if self.recursion not in RECURSION_PATHS:
            raise ValueError(f"recursion={self.recursion!r} is not a known path; accepted: {list(RECURSION_PATHS)}")
        if self.recursion != "auto":
            reason = self._cannot_run(self.recursion, x, f)
            if reason:
                raise ValueError(f"recursion={self.recursion!r} cannot run here: {reason}")
            return self.recursion
        if self.num_norms == 1:
            return "loop"
        table = AUTO_RECURSION.get(x.device.type, {})
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or f.requires_grad)
        if compiled is None:
            compiled = torch.compiler.is_compiling()
        for path in table.get("compiled" if compiled else "eager", ("loop",)):
            if path == "fused" and not needs_grad:
                continue  # without a backward, the loop is the same work with less overhead
            if not self._cannot_run(path, x, f):
                return path
        return "loop"

    def _cannot_run(self, path: str, x: torch.Tensor, f: torch.Tensor) -> str:
        """Why ``path`` cannot run this call, or ``""`` when it can."""
        norms = list(self.norms)
        if path == "fused":
            if not all(type(n) is nn.LayerNorm and n.weight is not None and n.bias is not None for n in norms):
                return "the fused PyTorch function takes LayerNorms with weight and bias only"
            if any(tuple(n.normalized_shape) != (x.shape[-1],) for n in norms):
                return "the norms must normalize the last dimension only"
            if x.shape != f.shape:
                return f"x and F(x) must have one shape, got {tuple(x.shape)} and {tuple(f.shape)}"
            return ""
        if path == "triton":
            kernels = _recursive_norm_triton()
            if kernels is None:
                return "Triton is not installed (pip install triton)"
            if x.device.type != "cuda" and not (kernels.interpreted and x.device.type == "cpu"):
                return f"Triton runs on CUDA (or on CPU with TRITON_INTERPRET=1), not on {x.device.type}"
            if torch.compiler.is_compiling():
                return "torch.compile does not trace the hand-written kernels here; use 'fused' or 'loop' under compile"
            kind = type(norms[0])
            if kind not in (nn.LayerNorm, nn.RMSNorm) or any(type(n) is not kind for n in norms):
                return "the Triton kernels take LayerNorms or RMSNorms, all of one kind"
            if any(tuple(n.normalized_shape) != (x.shape[-1],) for n in norms):
                return "the norms must normalize the last dimension only"
            if len({n.weight is None for n in norms}) > 1 or len({getattr(n, "bias", None) is None for n in norms}) > 1:
                return "the norms must all have weights, or none; all biases, or none"
            if x.shape != f.shape:
                return f"x and F(x) must have one shape, got {tuple(x.shape)} and {tuple(f.shape)}"
            if not kernels.supports(self.num_norms, x.shape[-1], x.dtype, f.dtype):
                return (f"the kernels do not take λ={self.num_norms} norms over {x.shape[-1]} features in "
                        f"{x.dtype} and {f.dtype}")
            return ""
        return ""

    def _fused(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        params = [p for norm in self.norms for p in (norm.weight, norm.bias)]
        eps = tuple(float(norm.eps) for norm in self.norms)
        device = x.device.type
        if not torch.is_autocast_enabled(device):
            return _RecursiveLayerNorm.apply(x, f, eps, *params)
        with torch.autocast(device_type=device, enabled=False):
            if _norm_dtype(x, f) == torch.float32:  # as autocast runs layer_norm here: in float32
                return _RecursiveLayerNorm.apply(x.float(), f.float(), eps, *(p.float() for p in params))
            return _RecursiveLayerNorm.apply(x, f, eps, *params)  # CPU autocast leaves norms in the input dtype

    def _triton(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        norms = list(self.norms)
        out_dtype = _norm_dtype(x, f)
        # an RMSNorm without eps uses the epsilon of the dtype it computes in (float32 for half precision)
        default_eps = torch.finfo(torch.float64 if out_dtype == torch.float64 else torch.float32).eps
        eps = tuple(default_eps if n.eps is None else float(n.eps) for n in norms)
        weight = torch.stack([n.weight for n in norms]) if norms[0].weight is not None else None
        bias = torch.stack([n.bias for n in norms]) if getattr(norms[0], "bias", None) is not None else None
        return _TritonRecursiveNorm.apply(x, f, weight, bias, eps, type(norms[0]) is nn.RMSNorm, out_dtype)


SCHEME_CLASSES: dict[str, type[Residual]] = {
    "post_ln": PostLN,
    "pre_ln": PreLN,
    "xskip": XSkip,
    "xskip_ln": XSkipLN,
    "rskip_ln": RSkipLN,
}
assert tuple(SCHEME_CLASSES) == RESIDUAL_SCHEMES


def build_residual(config, dim: int, *, kind: str = "text", branch_input: bool = True) -> Residual:
    """Builds the residual module that ``config`` asks for.

    Args:
        config: any config of this package (``residual_scheme``, ``skip_lambda``, ``residual_norm``,
            ``learn_skip_lambda`` and ``layer_norm_eps``).
        dim: feature size C of the sublayer's input and output.
        kind: ``"text"`` for ``(B, T, C)`` inputs, ``"image"`` for ``(B, C, H, W)``.
        branch_input: False where the caller computes F from an input of its own and ignores the one the scheme
            offers (a ResNet block that projects its shortcut). A scheme whose only norm is on F's input (pre_ln,
            ``x + F(N(x))``) then joins by the plain sum ``x + F``, and builds no norm that nothing would use.
    """
    eps = getattr(config, "layer_norm_eps", 1e-5)
    cls = SCHEME_CLASSES[config.residual_scheme]
    if not branch_input and cls.normalizes_branch_input:
        return XSkip(lambda: nn.Identity(), 1.0)  # λ = 1: x + F
    return cls(
        lambda: build_norm(config.residual_norm, dim, kind=kind, eps=eps),
        config.skip_lambda,
        learn_lambda=bool(getattr(config, "learn_skip_lambda", False)),
    )


def build_final_norm(config, dim: int, *, kind: str = "text") -> nn.Module:
    """The norm at the end of a stack: a real norm for schemes that need one (pre_ln), else Identity."""
    if SCHEME_CLASSES[config.residual_scheme].needs_final_norm:
        return build_norm(config.residual_norm, dim, kind=kind, eps=getattr(config, "layer_norm_eps", 1e-5))
    return nn.Identity()
