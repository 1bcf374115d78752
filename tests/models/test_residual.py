"""Each scheme against a hand computation of its formula in DESIGN.md, and a float64 gradient check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_rskip.models.residual import RESIDUAL_SCHEMES, SCHEME_CLASSES, build_final_norm, build_norm, build_residual
from tests.conftest import tiny_text_config


def _residual(scheme: str, lam: float, **kw) -> nn.Module:
    config = tiny_text_config(residual_scheme=scheme, skip_lambda=lam, **kw)
    module = build_residual(config, 8)
    with torch.no_grad():  # distinct, non-trivial norm parameters so a swapped norm would show
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


class CountingBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)
        self.calls = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(self.linear(h))


def test_scheme_table_is_complete():
    assert RESIDUAL_SCHEMES == ("post_ln", "pre_ln", "xskip", "xskip_ln", "rskip_ln")
    assert set(SCHEME_CLASSES) == set(RESIDUAL_SCHEMES)


def test_post_ln():
    x, f, r = torch.randn(2, 3, 8), CountingBranch(), _residual("post_ln", 1)
    n1 = r.norms[0]
    torch.testing.assert_close(r(x, f), n1(x + f(x)))


def test_pre_ln_and_final_norm():
    x, f, r = torch.randn(2, 3, 8), CountingBranch(), _residual("pre_ln", 1)
    torch.testing.assert_close(r(x, f), x + f(r.norms[0](x)))
    assert isinstance(build_final_norm(tiny_text_config(residual_scheme="pre_ln"), 8), nn.LayerNorm)
    for scheme in ("post_ln", "xskip", "xskip_ln", "rskip_ln"):
        assert isinstance(build_final_norm(tiny_text_config(residual_scheme=scheme), 8), nn.Identity)


@pytest.mark.parametrize("lam", [1, 0.5, 2, 3])
def test_xskip(lam):
    x, f, r = torch.randn(2, 3, 8), CountingBranch(), _residual("xskip", lam)
    assert len(r.norms) == 0
    torch.testing.assert_close(r(x, f), lam * x + f(x))


@pytest.mark.parametrize("lam", [1, 1.5, 2, 3])
def test_xskip_ln(lam):
    x, f, r = torch.randn(2, 3, 8), CountingBranch(), _residual("xskip_ln", lam)
    torch.testing.assert_close(r(x, f), r.norms[0](lam * x + f(x)))


def test_rskip_ln_lambda3_is_nested_norms():
    x, f, r = torch.randn(2, 3, 8), CountingBranch(), _residual("rskip_ln", 3)
    n1, n2, n3 = r.norms
    expected = n3(n2(n1(x + f(x)) + x) + x)
    f.calls = 0
    torch.testing.assert_close(r(x, f), expected)
    assert f.calls == 1, "F must be computed once, whatever λ"
    assert len({id(p) for p in r.parameters()}) == 6, "each norm has its own weight and bias"


def test_rskip_ln_lambda1_equals_post_ln():
    x, f = torch.randn(2, 3, 8), CountingBranch()
    post, rskip = _residual("post_ln", 1), _residual("rskip_ln", 1)
    rskip.load_state_dict(post.state_dict())
    torch.testing.assert_close(rskip(x, f), post(x, f))


def test_learned_lambda_is_a_parameter_and_gets_gradient():
    r = build_residual(tiny_text_config(residual_scheme="xskip_ln", skip_lambda=2.0, learn_skip_lambda=True), 8)
    assert isinstance(r.skip_lambda, nn.Parameter) and r.skip_lambda.item() == 2.0
    x, f = torch.randn(2, 3, 8), CountingBranch()
    r(x, f).sum().backward()
    assert r.skip_lambda.grad is not None and r.skip_lambda.grad.abs() > 0


@pytest.mark.parametrize("scheme,lam", [("post_ln", 1), ("pre_ln", 1), ("xskip", 2), ("xskip_ln", 2), ("rskip_ln", 3)])
def test_gradcheck_float64(scheme, lam):
    r = _residual(scheme, lam).double()
    f = CountingBranch().double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: r(inp, f), (x,), eps=1e-6, atol=1e-5)


def test_build_norm_tables_and_errors():
    assert isinstance(build_norm("layer", 4), nn.LayerNorm)
    assert isinstance(build_norm("rms", 4), nn.RMSNorm)
    assert isinstance(build_norm("layer", 4, kind="image"), nn.GroupNorm)
    assert isinstance(build_norm("batch", 4, kind="image"), nn.BatchNorm2d)
    with pytest.raises(ValueError, match="residual_norm='batch'"):
        build_norm("batch", 4, kind="text")
    with pytest.raises(ValueError, match="kind"):
        build_norm("layer", 4, kind="audio")
