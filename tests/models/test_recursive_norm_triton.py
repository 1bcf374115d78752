"""The Triton recursive norm (hf_rskip/models/recursive_norm_triton.py) against the PyTorch path, on CPU tensors
through Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before Triton is imported, so the checks run once in a subprocess (about 30 s of
interpreted kernels) and each test reads its case from the results. Skipped where Triton is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[2]

DTYPES = ("float32", "bfloat16")
NORMS = ("layer", "layer_no_bias", "rms", "rms_no_weight")
LAMBDAS = (1, 2, 3, 4)
WIDTH = 37  # odd, so that the kernels' masks matter (block of 64)
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2}
"""Largest ``max|ours - loop| / max|loop|``. bfloat16: the loop rounds every intermediate gradient to bfloat16, the
kernels keep them in float32; the forward matches to one bfloat16 step."""


def _make_norm(kind: str, width: int, eps: float | None):
    from torch import nn

    if kind.startswith("layer"):
        return nn.LayerNorm(width, eps=eps, bias=kind == "layer")
    return nn.RMSNorm(width, eps=eps, elementwise_affine=kind == "rms")


def _compare(dtype_name: str, kind: str, lam: int, width: int) -> dict:
    """One case through the module: RSkipLN with recursion="triton" against recursion="loop", same inputs."""
    import torch

    from hf_rskip.models.residual import RSkipLN

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(lam)
    # a different epsilon per norm; None: RMSNorm's default (float32's epsilon)
    eps_values = iter([1e-5, 1e-1, None if kind.startswith("rms") else 1e-4, 1e-3])
    residual = RSkipLN(lambda: _make_norm(kind, width, next(eps_values)), lam).to(dtype)
    with torch.no_grad():
        for p in residual.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(3, 5, width, dtype=dtype, requires_grad=True)
    f = torch.randn(3, 5, width, dtype=dtype, requires_grad=True)
    weights = torch.linspace(-1, 1, width, dtype=dtype)
    results = {}
    for path in ("loop", "triton"):
        residual.recursion = path
        y = residual(x, lambda _: f)
        grads = torch.autograd.grad((y * weights).pow(2).sum(), [x, f, *residual.parameters()])
        results[path] = [y, *grads]
    names = ["y", "x", "f", *(name for name, _ in residual.named_parameters())]
    errors = {
        name: float((ours.float() - loop.float()).abs().max() / loop.float().abs().max().clamp_min(1e-30))
        for name, ours, loop in zip(names, results["triton"], results["loop"])
    }
    return {"errors": errors, "dtype": str(results["triton"][0].dtype), "loop_dtype": str(results["loop"][0].dtype)}


def _second_order(kind: str) -> bool:
    """gradgradcheck of the Triton path in float64 (its backward under create_graph differentiates the loop)."""
    import torch

    from hf_rskip.models.residual import RSkipLN

    residual = RSkipLN(lambda: _make_norm(kind, 5, 1e-5), 2).double()
    residual.recursion = "triton"
    with torch.no_grad():
        for p in residual.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    return torch.autograd.gradgradcheck(lambda x, f, *params: residual(x, lambda _: f), (x, f, *residual.parameters()),
                                        eps=1e-6, atol=1e-4)


def _penalty_matches_the_loop(kind: str) -> float:
    """A gradient penalty (gradient of |dL/dx|^2) with f = F(x), Triton path against the loop: the largest
    difference."""
    import torch
    from torch import nn

    from hf_rskip.models.residual import RSkipLN

    torch.manual_seed(1)
    residual = RSkipLN(lambda: _make_norm(kind, 6, 1e-5), 3).double()
    branch = nn.Linear(6, 6).double()
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)

    def gradients(path: str) -> list:
        residual.recursion = path
        (grad_x,) = torch.autograd.grad(residual(x, lambda h: torch.tanh(branch(h))).pow(2).sum(), x,
                                        create_graph=True)
        return list(torch.autograd.grad(grad_x.pow(2).sum(), [x, *residual.parameters(), *branch.parameters()]))

    return max(float((a - b).abs().max()) for a, b in zip(gradients("triton"), gradients("loop")))


def _direct_kernels() -> dict:
    """The kernel functions themselves, on rows with a stride (a slice of a wider tensor) and a 0-stride gradient."""
    import torch

    from hf_rskip.models.recursive_norm_triton import recursive_norm_backward, recursive_norm_forward

    torch.manual_seed(0)
    wide = torch.randn(7, 2 * WIDTH)
    x, f = wide[:, :WIDTH], wide[:, WIDTH:]  # row stride 2C
    weight, bias = torch.randn(2, WIDTH), torch.randn(2, WIDTH)
    y, mean, rstd = recursive_norm_forward(x, f, weight, bias, (1e-5, 1e-2), False, torch.float32)
    h = x + f
    for i, eps in enumerate((1e-5, 1e-2)):
        g = torch.nn.functional.layer_norm(h, (WIDTH,), weight[i], bias[i], eps)
        h = g + x
    grad = torch.ones(()).expand_as(y)  # the gradient of y.sum(): stride 0
    dx, df, dw, db = recursive_norm_backward(grad, x, f, weight, bias, mean, rstd, False, torch.float32)
    xs, fs, ws, bs = (t.clone().requires_grad_() for t in (x, f, weight, bias))
    h = xs + fs
    for i, eps in enumerate((1e-5, 1e-2)):
        g = torch.nn.functional.layer_norm(h, (WIDTH,), ws[i], bs[i], eps)
        h = g + xs
    expected = torch.autograd.grad(g.sum(), [xs, fs, ws, bs])
    return {"y": float((y - g).abs().max()),
            "grads": [float((a - b).abs().max()) for a, b in zip((dx, df, dw, db), expected)]}


def _run_checks() -> None:
    """Run in the subprocess (TRITON_INTERPRET=1): every case, printed as one JSON line."""
    import torch

    torch.set_num_threads(1)
    out = {"cases": {}, "second_order": {}}
    for dtype in DTYPES:
        for kind in NORMS:
            for lam in LAMBDAS:
                out["cases"][f"{dtype}-{kind}-{lam}"] = _compare(dtype, kind, lam, WIDTH)
    out["cases"]["float32-layer-2-wide"] = _compare("float32", "layer", 2, 129)
    for kind in ("layer", "rms"):
        out["second_order"][kind] = _second_order(kind)
        out["second_order"][f"{kind}-penalty"] = _penalty_matches_the_loop(kind)
    out["direct"] = _direct_kernels()
    print("RESULTS " + json.dumps(out))


def _interpret() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    code = "import tests.models.test_recursive_norm_triton as t; t._run_checks()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.fixture(scope="session")
def interpreted(tmp_path_factory) -> dict:
    """The subprocess's results, computed once per test session even when pytest-xdist spreads these tests over
    workers (the pattern of xdist's documentation: the first worker writes them to a shared file under a lock)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # not under xdist
        return _interpret()
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "recursive_norm_triton_interpreted.json"
    with FileLock(str(shared) + ".lock"):
        if not shared.is_file():
            shared.write_text(json.dumps(_interpret()))
        return json.loads(shared.read_text())


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("kind", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_triton_path_matches_the_loop(interpreted, dtype, kind, lam):
    """Forward and every gradient (x, f, each norm's weight and bias), each norm with its own epsilon."""
    case = interpreted["cases"][f"{dtype}-{kind}-{lam}"]
    assert case["dtype"] == case["loop_dtype"]
    bad = {name: err for name, err in case["errors"].items() if not err <= TOLERANCE[dtype]}
    assert not bad, f"relative errors above {TOLERANCE[dtype]}: {bad}"


def test_triton_path_matches_the_loop_at_a_wider_odd_width(interpreted):
    errors = interpreted["cases"]["float32-layer-2-wide"]["errors"]
    assert max(errors.values()) <= TOLERANCE["float32"], errors


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_triton_path_second_order_gradients(interpreted, kind):
    assert interpreted["second_order"][kind] is True  # gradgradcheck, float64
    assert interpreted["second_order"][f"{kind}-penalty"] < 1e-9  # a gradient penalty through F, against the loop


def test_kernels_take_strided_rows_and_a_broadcast_gradient(interpreted):
    assert interpreted["direct"]["y"] < 1e-5
    assert max(interpreted["direct"]["grads"]) < 1e-4, interpreted["direct"]
