"""Each scheme against a hand computation of its formula (README, "The schemes"), and a float64 gradient check."""

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


# --- float16 and xskip's growing skip ------------------------------------------------------------------

@pytest.mark.parametrize("scheme,lam,layers,risky", [
    ("xskip", 2, 2, False),  # λ^6 = 64
    ("xskip", 2, 3, True),  # λ^9 = 512 (at initialization activations already reach a third of float16's range)
    ("xskip", 2, 6, True),
    ("xskip", 1.5, 6, True),  # λ^18 ≈ 1478
    ("xskip", 1.25, 6, False),  # λ^18 ≈ 56
    ("xskip", 1.25, 10, True),  # λ^30 ≈ 808: measured overflow in the gradients
    ("xskip", 1, 12, False),
    ("xskip", 0.5, 12, False),
    ("xskip_ln", 3, 12, False),
    ("rskip_ln", 3, 12, False),
    ("post_ln", None, 12, False),
    ("pre_ln", None, 12, False),
])
def test_fp16_overflow_risk_for_text(scheme, lam, layers, risky):
    from hf_rskip.models.residual import fp16_overflow_risk

    config = tiny_text_config(residual_scheme=scheme, skip_lambda=lam, encoder_layers=layers, decoder_layers=layers)
    message = fp16_overflow_risk(config)
    assert (message is not None) == risky
    if risky:
        assert f"skip_lambda={lam}" in message and f"λ^{3 * layers}" in message and "bf16" in message


@pytest.mark.parametrize("lam,depth,block_norm,risky", [
    # BatchNorm: the whole network until the running statistics settle (λ^(3n); fp16 NaN measured from depth 32 at
    # λ = 2 in evaluation at initialization)
    (2, 20, "batch", True), (2, 32, "batch", True), (1.5, 20, "batch", False), (1.5, 32, "batch", True),
    (1.25, 44, "batch", False),
    # GroupNorm pre-activations always normalize: each stage restarts the stream (λ^n)
    (2, 44, "layer", False), (2, 56, "layer", True), (3, 32, "layer", False), (3, 44, "layer", True),
    (1, 110, "batch", False), (0.5, 110, "layer", False),
])
def test_fp16_overflow_risk_for_resnet(lam, depth, block_norm, risky):
    from hf_rskip import RSkipResNetConfig
    from hf_rskip.models.residual import fp16_overflow_risk

    config = RSkipResNetConfig(depth=depth, residual_scheme="xskip", skip_lambda=lam, block_norm=block_norm)
    message = fp16_overflow_risk(config)
    assert (message is not None) == risky
    if risky and block_norm == "layer":
        assert f"{config.blocks_per_stage} blocks per stage (depth {depth})" in message
    if risky and block_norm == "batch":
        assert f"all {3 * config.blocks_per_stage} blocks of depth {depth}" in message
    for scheme in ("post_ln", "pre_ln", "xskip_ln", "rskip_ln"):
        assert fp16_overflow_risk(RSkipResNetConfig(depth=depth, residual_scheme=scheme)) is None


def test_fp16_overflow_risk_flags_a_model_that_overflows():
    """A tiny xskip model in float16 autocast: 4+4 layers at λ = 3 give inf/NaN logits, 2+2 at λ = 2 do not."""
    from hf_rskip import RSkipForConditionalGeneration
    from hf_rskip.models.residual import fp16_overflow_risk

    ids = torch.randint(2, 61, (3, 9), generator=torch.Generator().manual_seed(0))
    for lam, layers, overflows in ((3, 4, True), (2, 2, False)):
        config = tiny_text_config(residual_scheme="xskip", skip_lambda=lam, encoder_layers=layers,
                                  decoder_layers=layers)
        model = RSkipForConditionalGeneration(config).eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            logits = model(input_ids=ids, decoder_input_ids=ids[:, :5]).logits
        assert (not torch.isfinite(logits).all()) == overflows
        assert (fp16_overflow_risk(config) is not None) == overflows


# --- rskip_ln's recursion paths (RSkipLN.recursion): the loop, the fused PyTorch function, Triton ------------------


def _path_outputs(r: nn.Module, path: str, x: torch.Tensor, branch: nn.Module) -> list[torch.Tensor]:
    """Output and first-order gradients (x, norms, branch) of one path."""
    r.recursion = path
    y = r(x, branch)
    weights = torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)
    grads = torch.autograd.grad((y.float() * weights.float()).pow(2).sum(), [x, *r.parameters(), *branch.parameters()])
    return [y, *grads]


def test_recursion_paths_and_the_auto_table():
    from hf_rskip.models.residual import AUTO_RECURSION

    r, x = _residual("rskip_ln", 2), torch.randn(2, 3, 8, requires_grad=True)
    assert r.recursion == "auto"
    assert AUTO_RECURSION["cpu"] == {"eager": ("loop",), "compiled": ("loop",)}  # measured: see the table's docstring
    assert r.recursion_path(x, x) == "loop" and r.recursion_path(x, x, compiled=True) == "loop"
    assert r.recursion_path(x.detach(), x.detach(), compiled=False) == "loop"
    r.recursion = "fused"
    assert r.recursion_path(x, x) == "fused"
    r.recursion = "fast"
    with pytest.raises(ValueError, match="recursion='fast' is not a known path; accepted: .*'loop'"):
        r(x, CountingBranch())
    rms = _residual("rskip_ln", 2, residual_norm="rms")
    rms.recursion = "fused"
    with pytest.raises(ValueError, match="LayerNorms with weight and bias"):
        rms(x, CountingBranch())
    rms.recursion = "triton"  # on a CPU, without Triton's interpreter: refused with the reason
    with pytest.raises(ValueError, match="recursion='triton' cannot run here: .*(Triton|CUDA)"):
        rms(x, CountingBranch())


@pytest.mark.parametrize("lam", [2, 3])
def test_fused_path_second_order_gradients_equal_the_loops(lam):
    """A gradient penalty (the gradient of |dL/dx|^2) through the fused function, against the plain loop. The
    function's own backward is not differentiable: under create_graph it must differentiate the loop."""
    r, branch = _residual("rskip_ln", lam).double(), CountingBranch().double()
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(-1, 1, 8, dtype=torch.float64)

    def penalty_gradients(path: str) -> list[torch.Tensor]:
        r.recursion = path
        (grad_x,) = torch.autograd.grad((r(x, branch) * weights).pow(2).sum(), x, create_graph=True)
        return list(torch.autograd.grad(grad_x.pow(2).sum(), [x, *r.parameters(), *branch.parameters()]))

    for fused, loop in zip(penalty_gradients("fused"), penalty_gradients("loop")):
        torch.testing.assert_close(fused, loop, rtol=1e-9, atol=1e-10)


def test_fused_path_gradgradcheck_float64():
    r = _residual("rskip_ln", 3).double()
    r.recursion = "fused"
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, f, *params: r(x, lambda _: f), (x, f, *r.parameters()),
                                        eps=1e-6, atol=1e-5)


def test_fused_path_uses_each_norms_epsilon():
    r, branch = _residual("rskip_ln", 3), CountingBranch()
    for norm, eps in zip(r.norms, (1e-5, 1e-1, 1e-3)):
        norm.eps = eps
    x = 0.1 * torch.randn(2, 3, 8)  # small activations, so that eps = 0.1 shows
    x.requires_grad_()
    for fused, loop in zip(_path_outputs(r, "fused", x, branch), _path_outputs(r, "loop", x, branch)):
        torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stream", [torch.bfloat16, torch.float32])
def test_fused_path_gives_the_loops_dtype_and_values_under_cpu_autocast(stream):
    """CPU autocast leaves norms in their input's dtype: a bfloat16 residual stream stays bfloat16 (a float32 one stays
    float32), whichever path runs."""
    r, branch = _residual("rskip_ln", 2), CountingBranch()
    x = torch.randn(2, 3, 8).to(stream).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused, loop = _path_outputs(r, "fused", x, branch), _path_outputs(r, "loop", x, branch)
    assert fused[0].dtype == loop[0].dtype == stream
    for a, b in zip(fused, loop):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


@pytest.mark.compile
@pytest.mark.parametrize("norm,paths", [("layer", ("loop", "fused")), ("rms", ("loop",))])
def test_residual_compiles_whole_with_inductor_and_matches_eager(norm, paths):
    """fullgraph=True: no graph break anywhere in the residual module, the fused autograd function included; the
    compiled output and gradients are eager's. About 10-20 s of inductor compilation per path on a CPU."""
    import torch._dynamo

    r, branch = _residual("rskip_ln", 3, residual_norm=norm), CountingBranch()
    r.norms[1].eps = 1e-2
    x = torch.randn(2, 3, 8, requires_grad=True)
    compiled = torch.compile(r, backend="inductor", fullgraph=True)
    torch._dynamo.reset()
    try:
        for path in paths:
            eager = _path_outputs(r, path, x, branch)
            r.recursion = path
            y = compiled(x, branch)
            grads = torch.autograd.grad((y * torch.linspace(-1, 1, 8)).pow(2).sum(),
                                        [x, *r.parameters(), *branch.parameters()])
            for a, b in zip([y, *grads], eager):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            explanation = torch._dynamo.explain(r)(x, branch)
            assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    finally:
        torch._dynamo.reset()


def test_remote_code_ships_the_triton_file_and_never_asks_for_triton(tmp_path):
    """residual.py imports the kernels lazily inside try: transformers' import check (which skips try blocks) must not
    list triton, the saved folder must carry the kernels' file, and a folder loads and trains where Triton is absent."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    from transformers.dynamic_module_utils import get_imports, get_relative_import_files

    from hf_rskip import RSkipForConditionalGeneration
    from hf_rskip.models import residual

    folder = Path(residual.__file__).parent
    assert "triton" not in get_imports(folder / "residual.py")
    assert "triton" not in get_imports(folder / "recursive_norm_triton.py")
    assert str(folder / "recursive_norm_triton.py") in get_relative_import_files(folder / "modeling_rskip.py")

    model = RSkipForConditionalGeneration(tiny_text_config(residual_scheme="rskip_ln", skip_lambda=2))
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "recursive_norm_triton.py").is_file()
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hf_rskip"] = None  # neither the package ...
        sys.modules["triton"] = None  # ... nor Triton can be imported
        import torch
        from transformers import AutoModelForSeq2SeqLM
        model = AutoModelForSeq2SeqLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        ids = torch.tensor([[5, 6, 7, 1]])
        model(input_ids=ids, labels=ids).loss.backward()
        residual = sys.modules[type(model.model.encoder.layers[0].final_layer_norm).__module__]
        assert residual._recursive_norm_triton() is None
        print("REMOTE_OK")
        """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "REMOTE_OK" in result.stdout, result.stderr[-3000:]
