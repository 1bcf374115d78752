"""The residual schemes of Liu et al. (COLING 2020), in one place.

Every sublayer of every model in this package (self-attention, cross-attention, feed-forward, a
ResNet residual branch) is wrapped by a :class:`Residual` built here from the model config. Layers
call ``residual(x, branch)`` and never look at the scheme themselves, so adding a scheme means
adding one class below (and its test).

Notation: ``F`` is the sublayer (``branch``), ``x`` its input, ``N`` a normalization layer and
``λ`` is ``skip_lambda``.
"""

from __future__ import annotations

from collections.abc import Callable

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


def check_residual_options(residual_scheme: object, skip_lambda: object, residual_norm: object, norms: tuple[str, ...]) -> None:
    """Raises ``ValueError`` naming the bad option, its value and what is accepted."""
    if residual_scheme not in RESIDUAL_SCHEMES:
        raise ValueError(f"residual_scheme={residual_scheme!r} is not a known scheme; accepted: {list(RESIDUAL_SCHEMES)}")
    if isinstance(skip_lambda, bool) or not isinstance(skip_lambda, (int, float)):
        raise ValueError(f"skip_lambda={skip_lambda!r} must be a number (an integer >= 1 for 'rskip_ln', > 0 otherwise)")
    if not skip_lambda > 0 or skip_lambda != skip_lambda or skip_lambda == float("inf"):
        raise ValueError(f"skip_lambda={skip_lambda!r} must be a finite number > 0")
    if residual_scheme == "rskip_ln" and (float(skip_lambda) != int(skip_lambda) or skip_lambda < 1):
        raise ValueError(
            f"skip_lambda={skip_lambda!r} is not valid for residual_scheme='rskip_ln': it counts the recursive "
            "normalizations, so it must be an integer >= 1 (1 is post_ln)"
        )
    if residual_norm not in norms:
        raise ValueError(f"residual_norm={residual_norm!r} is not supported here; accepted: {list(norms)}")


def normalize_skip_lambda(residual_scheme: str, skip_lambda: float) -> float | int:
    """The λ a scheme actually uses: post_ln and pre_ln have none (stored as 1), rskip_ln counts norms (int)."""
    if residual_scheme in ("post_ln", "pre_ln"):
        return 1
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


class Residual(nn.Module):
    """Base class: combines the skip ``x`` with the branch ``F``.

    Subclasses set ``num_norms`` (how many norm layers they own, kept in ``self.norms``) and implement
    ``forward(x, branch)``, where ``branch`` computes F on whatever input the scheme feeds it.
    """

    num_norms: int = 0
    needs_final_norm: bool = False

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


class _RecursiveLayerNorm(torch.autograd.Function):
    """``G1 = LN1(x + f); Gi = LNi(G(i-1) + x); y = G(λ)`` with the activation memory of one LayerNorm.

    Autograd through the plain loop keeps every norm's input ``G(i-1) + x`` alive until backward: λ tensors of
    shape ``(B, T, C)`` per sublayer where Post-LN keeps one. This function keeps only ``x + f`` (``x`` is kept by
    the branch's first linear layer anyway, so saving it costs nothing) and the per-row mean and 1/std of every norm,
    and rebuilds the other norm inputs in backward with the same kernels, so outputs and gradients are those of the
    loop (bit for bit on CPU for λ = 2; a different order of summing ``x``'s gradient terms for λ >= 3).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: torch.Tensor, eps: float, *params: torch.Tensor) -> torch.Tensor:
        weights, biases = params[0::2], params[1::2]
        shape = [x.shape[-1]]
        first = x + f
        g, mean, rstd = torch.ops.aten.native_layer_norm(first, shape, weights[0], biases[0], eps)
        stats = [mean, rstd]
        for weight, bias in zip(weights[1:], biases[1:]):
            g, mean, rstd = torch.ops.aten.native_layer_norm(g + x, shape, weight, bias, eps)
            stats += [mean, rstd]
        ctx.eps = eps
        ctx.save_for_backward(x, first, *stats, *params)
        return g

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, first, *rest = ctx.saved_tensors
        count = (len(rest)) // 4  # λ: two stats and two params per norm
        stats, params = rest[: 2 * count], rest[2 * count:]
        weights, biases = params[0::2], params[1::2]
        shape = [x.shape[-1]]
        # rebuild the norm inputs: inputs[0] = x + f, inputs[i] = LN_i(inputs[i-1]) + x
        inputs = [first]
        for i in range(count - 1):
            g = torch.ops.aten.native_layer_norm(inputs[-1], shape, weights[i], biases[i], ctx.eps)[0]
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


class RSkipLN(Residual):
    """Recursive skip with normalization, F computed once and λ norms with their own parameters::

        G1 = N1(x + F(x));  Gi = Ni(G(i-1) + x) for i = 2..λ;  y = G(λ)

    With LayerNorms and gradients on, the recursion runs as one autograd function (:class:`_RecursiveLayerNorm`)
    that keeps one norm input instead of λ, so training memory stays that of Post-LN; the result is the same.
    """

    def __init__(self, make_norm: Callable[[], nn.Module], skip_lambda: float = 2, learn_lambda: bool = False) -> None:
        self.num_norms = int(skip_lambda)
        super().__init__(make_norm, skip_lambda, learn_lambda=False)
        self._fusable = self.num_norms > 1 and all(
            type(norm) is nn.LayerNorm and norm.elementwise_affine and norm.bias is not None
            and len(norm.normalized_shape) == 1 for norm in self.norms
        )

    def forward(self, x: torch.Tensor, branch: Branch) -> torch.Tensor:
        f = branch(x)
        if self._fusable and torch.is_grad_enabled() and (x.requires_grad or f.requires_grad):
            return self._fused(x, f)
        g = self.norms[0](x + f)
        for norm in self.norms[1:]:
            g = norm(g + x)
        return g

    def _fused(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        params = [p for norm in self.norms for p in (norm.weight, norm.bias)]
        eps = self.norms[0].eps
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # as autocast runs layer_norm: in float32 (the residual stream is float32 there already)
            with torch.autocast(device_type=device, enabled=False):
                return _RecursiveLayerNorm.apply(x.float(), f.float(), eps, *(p.float() for p in params))
        return _RecursiveLayerNorm.apply(x, f, eps, *params)


SCHEME_CLASSES: dict[str, type[Residual]] = {
    "post_ln": PostLN,
    "pre_ln": PreLN,
    "xskip": XSkip,
    "xskip_ln": XSkipLN,
    "rskip_ln": RSkipLN,
}
assert tuple(SCHEME_CLASSES) == RESIDUAL_SCHEMES


def build_residual(config, dim: int, *, kind: str = "text") -> Residual:
    """Builds the residual module that ``config`` asks for.

    Args:
        config: any config of this package (``residual_scheme``, ``skip_lambda``, ``residual_norm``,
            ``learn_skip_lambda`` and ``layer_norm_eps``).
        dim: feature size C of the sublayer's input and output.
        kind: ``"text"`` for ``(B, T, C)`` inputs, ``"image"`` for ``(B, C, H, W)``.
    """
    eps = getattr(config, "layer_norm_eps", 1e-5)
    cls = SCHEME_CLASSES[config.residual_scheme]
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
