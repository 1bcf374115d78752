"""The rSkip PreAct-ResNet: common checks over every scheme and both norms, parity of xskip λ=1 with a plain
PreAct-ResNet written out here, the scheme formulas at block level, parameter count of depth 110, Auto classes,
the remote-code load and the image-classification pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hf_rskip.models.configuration_rskip_resnet import RSkipResNetConfig
from hf_rskip.models.modeling_rskip_resnet import (
    RSkipResNetBasicLayer,
    RSkipResNetForImageClassification,
    RSkipResNetModel,
)
from hf_rskip.models import register_auto_classes
from hf_rskip.models.residual import RESIDUAL_SCHEMES

from tests.conftest import SCHEME_LAMBDAS


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from a second thread; on a shared CPU an oversubscribed OpenMP pool is far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(scheme: str = "rskip_ln", skip_lambda: float = 2, **overrides) -> RSkipResNetConfig:
    kwargs = dict(depth=14, hidden_sizes=[4, 6, 8], residual_scheme=scheme, skip_lambda=skip_lambda, num_labels=5)
    kwargs.update(overrides)
    return RSkipResNetConfig(**kwargs)


def randomize_norms(model: torch.nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so parity checks see every norm."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=generator))
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))


def pixels(batch: int = 3, size: int = 8, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(2))


# --- the tester over every scheme and both norms ----------------------------------------------------

@pytest.mark.parametrize("scheme, skip_lambda", SCHEME_LAMBDAS)
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_common_checks(scheme: str, skip_lambda: int, norm: str) -> None:
    config = tiny_config(scheme, skip_lambda, residual_norm=norm)
    model = RSkipResNetForImageClassification(config)
    x, labels = pixels(), torch.tensor([0, 4, 2])
    out = model(x, labels=labels, output_hidden_states=True)

    assert out.logits.shape == (3, 5)
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, labels))
    # stem + one output per stage, halving the resolution after the first stage
    assert [h.shape for h in out.hidden_states] == [(3, 4, 8, 8), (3, 4, 8, 8), (3, 6, 4, 4), (3, 8, 2, 2)]
    assert model(x).hidden_states is None

    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    # every parameter takes part (DDP needs no find_unused_parameters), pre_ln's down-sampling blocks included
    assert sorted(n for n, g in grads.items() if g is None) == []

    blocks = [m for m in model.modules() if isinstance(m, RSkipResNetBasicLayer)]
    assert len(blocks) == 3 * config.blocks_per_stage
    norms = {"post_ln": 1, "pre_ln": 1, "xskip": 0, "xskip_ln": 1, "rskip_ln": skip_lambda}[scheme]
    for block in blocks:
        # a down-sampling block computes F from its own pre-activation: pre_ln's norm of F's input has no place there
        expected = 0 if scheme == "pre_ln" and block.projects_shortcut else norms
        assert len(block.residual.norms) == expected

    model.eval()
    tuple_out = model(x, labels=labels, return_dict=False)
    assert torch.allclose(tuple_out[1], model(x).logits)


@pytest.mark.parametrize("scheme, skip_lambda", [("xskip", 1), ("rskip_ln", 2), ("pre_ln", 1)])
def test_eval_mode_is_per_sample(scheme: str, skip_lambda: int) -> None:
    """With running statistics, a sample's logits do not depend on the rest of the batch."""
    model = RSkipResNetForImageClassification(tiny_config(scheme, skip_lambda)).eval()
    randomize_norms(model)
    x = pixels(4)
    batched = model(x).logits
    alone = torch.cat([model(x[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


# --- parity: xskip λ=1 is the plain PreAct-ResNet of He et al. ----------------------------------------

def reference_preact_resnet(model: RSkipResNetForImageClassification, x: torch.Tensor) -> torch.Tensor:
    """He et al.'s PreAct-ResNet (identity shortcut; projection of the pre-activated input where the shape changes)
    written with torch.nn.functional from the model's weights, BatchNorm with running statistics."""

    def bn(norm: torch.nn.BatchNorm2d, h: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(h, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps)

    trunk = model.resnet
    h = F.conv2d(x, trunk.embedder.weight, padding=1)
    for stage_index, stage in enumerate(trunk.stages):
        for block_index, block in enumerate(stage.layers):
            stride = 2 if stage_index > 0 and block_index == 0 else 1
            preact = F.relu(bn(block.norm1, h))
            out = F.conv2d(preact, block.conv1.weight, stride=stride, padding=1)
            out = F.conv2d(F.relu(bn(block.norm2, out)), block.conv2.weight, padding=1)
            skip = F.conv2d(preact, block.shortcut.weight, stride=stride) if out.shape != h.shape else h
            h = skip + out
    h = F.relu(bn(trunk.norm, h))
    return F.linear(h.mean(dim=(2, 3)), model.classifier.weight, model.classifier.bias)


def test_xskip_lambda_1_is_the_plain_preact_resnet() -> None:
    model = RSkipResNetForImageClassification(tiny_config("xskip", 1, residual_norm="layer")).eval()
    randomize_norms(model)
    assert sum(p.numel() for n, p in model.named_parameters() if "residual" in n) == 0
    x = pixels()
    torch.testing.assert_close(model(x).logits, reference_preact_resnet(model, x), rtol=1e-4, atol=1e-5)


def test_rskip_ln_lambda_1_is_post_ln() -> None:
    post = RSkipResNetForImageClassification(tiny_config("post_ln", 1)).eval()
    randomize_norms(post)
    rskip = RSkipResNetForImageClassification(tiny_config("rskip_ln", 1)).eval()
    rskip.load_state_dict(post.state_dict())  # same parameter names: one norm per block
    x = pixels()
    torch.testing.assert_close(rskip(x).logits, post(x).logits)


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_rskip_ln_block_formula(norm: str) -> None:
    """λ=3 in an identity block and in a down-sampling block (x = projected shortcut, F once)."""
    config = tiny_config("rskip_ln", 3, residual_norm=norm)
    model = RSkipResNetModel(config).eval()
    randomize_norms(model)
    h = torch.randn(2, 4, 8, 8)
    for block in (model.stages[0].layers[1], model.stages[1].layers[0]):
        n1, n2, n3 = block.residual.norms
        preact = F.relu(block.norm1(h))
        branch = block.conv2(F.relu(block.norm2(block.conv1(preact))))
        x = block.shortcut(preact) if block.projects_shortcut else h
        expected = n3(n2(n1(x + branch) + x) + x)
        torch.testing.assert_close(block(h), expected)
        h = expected if not block.projects_shortcut else h


def test_xskip_ln_scales_the_projected_shortcut() -> None:
    model = RSkipResNetModel(tiny_config("xskip_ln", 0.5, residual_norm="layer")).eval()
    block = model.stages[2].layers[0]
    h = torch.randn(2, 6, 4, 4)
    preact = F.relu(block.norm1(h))
    branch = block.conv2(F.relu(block.norm2(block.conv1(preact))))
    torch.testing.assert_close(block(h), block.residual.norms[0](0.5 * block.shortcut(preact) + branch))


@pytest.mark.parametrize("scheme, skip_lambda", SCHEME_LAMBDAS)
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_down_sampling_block_formula(scheme: str, skip_lambda: int, norm: str) -> None:
    """At a down-sampling block, x is the projected shortcut s and F comes from the block's own pre-activation."""
    model = RSkipResNetModel(tiny_config(scheme, skip_lambda, residual_norm=norm)).eval()
    randomize_norms(model)
    block = model.stages[1].layers[0]
    h = torch.randn(2, 4, 8, 8)
    preact = F.relu(block.norm1(h))
    s, branch = block.shortcut(preact), block.conv2(F.relu(block.norm2(block.conv1(preact))))
    norms, lam = list(block.residual.norms), skip_lambda
    if scheme == "post_ln":
        expected = norms[0](s + branch)
    elif scheme == "pre_ln":
        expected = s + branch
    elif scheme == "xskip":
        expected = lam * s + branch
    elif scheme == "xskip_ln":
        expected = norms[0](lam * s + branch)
    else:
        expected = norms[0](s + branch)
        for n in norms[1:]:
            expected = n(expected + s)
    with torch.no_grad():
        torch.testing.assert_close(block(h), expected, rtol=0, atol=0)


def test_pre_ln_normalizes_the_branch_input_and_the_stack_end() -> None:
    model = RSkipResNetModel(tiny_config("pre_ln", 1)).eval()
    randomize_norms(model)
    block = model.stages[0].layers[1]
    h = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(block(h), h + block.branch(block.residual.norms[0](h)))
    assert isinstance(model.final_residual_norm, torch.nn.GroupNorm)
    assert isinstance(RSkipResNetModel(tiny_config("rskip_ln", 2)).final_residual_norm, torch.nn.Identity)


# --- size, init, options ---------------------------------------------------------------------------

def preact_resnet_parameters(
    n: int, widths: tuple[int, ...] = (16, 32, 64), channels: int = 3, labels: int = 10
) -> int:
    """Parameters of He et al.'s CIFAR PreAct-ResNet (BN pre-activations, 1x1 projections), counted by hand."""
    total = 9 * channels * widths[0]  # stem conv
    c_in = widths[0]
    for width in widths:
        for block in range(n):
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width  # norm1, conv1, norm2, conv2
            total += c_in * width if c_in != width else 0  # projection shortcut
            c_in = width
    return total + 2 * widths[-1] + widths[-1] * labels + labels  # final norm, classifier


def test_depth_110_has_about_1_7m_parameters() -> None:
    plain = RSkipResNetForImageClassification(RSkipResNetConfig(depth=110, residual_scheme="xskip", skip_lambda=1,
                                                                 num_labels=10))
    count = plain.num_parameters()
    assert count == preact_resnet_parameters(18) == 1_730_522  # He et al. report 1.7M
    rskip = RSkipResNetForImageClassification(RSkipResNetConfig(depth=110, num_labels=10))
    # rskip_ln λ=2 adds two (C, H, W) norms with a per-channel affine to each of the 54 blocks
    assert rskip.num_parameters() == count + 18 * 2 * 2 * (16 + 32 + 64)


def test_he_init_and_zero_init_last() -> None:
    model = RSkipResNetModel(tiny_config(zero_init_last=True, depth=20, hidden_sizes=[16, 32, 64]))
    conv1 = model.stages[2].layers[1].conv1.weight
    fan_out = conv1.shape[0] * 9
    assert abs(conv1.std().item() - (2 / fan_out) ** 0.5) < 0.15 * (2 / fan_out) ** 0.5
    assert all((block.conv2.weight == 0).all() for stage in model.stages for block in stage.layers)
    assert (model.embedder.weight != 0).any()
    # every identity block of the plain network starts as the identity
    plain = RSkipResNetModel(tiny_config("xskip", 1, zero_init_last=True)).eval()
    h = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(plain.stages[0].layers[1](h), h)


def test_learned_lambda_starts_at_skip_lambda_and_trains() -> None:
    model = RSkipResNetForImageClassification(tiny_config("xskip", 0.7, learn_skip_lambda=True))
    lambdas = [p for n, p in model.named_parameters() if n.endswith("residual.skip_lambda")]
    assert len(lambdas) == 3 * 2 and all(p.item() == pytest.approx(0.7) for p in lambdas)
    model(pixels(), labels=torch.tensor([0, 1, 2])).loss.backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in lambdas)


def test_forward_features_and_head_compose_to_the_logits() -> None:
    model = RSkipResNetForImageClassification(tiny_config()).eval()
    x = pixels()
    features = model.forward_features(x)
    assert features.shape == (3, 8, 2, 2) and (features >= 0).all()  # after the final ReLU
    torch.testing.assert_close(model.forward_head(features), model(x).logits)
    base = model.resnet(x)
    torch.testing.assert_close(base.last_hidden_state, features)
    torch.testing.assert_close(base.pooler_output, features.mean(dim=(2, 3)))


def test_grayscale_input_channels() -> None:
    model = RSkipResNetForImageClassification(tiny_config(num_channels=1))
    assert model(pixels(channels=1)).logits.shape == (3, 5)


# --- sharing -------------------------------------------------------------------------------------------

def test_save_load_and_auto_classes(tmp_path) -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    register_auto_classes()
    names = {0: "a", 1: "b", 2: "c", 3: "d", 4: "e"}
    model = RSkipResNetForImageClassification(tiny_config(id2label=names, label2id={v: k for k, v in names.items()}))
    randomize_norms(model)
    model.eval().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    for name in ("modeling_rskip_resnet.py", "configuration_rskip_resnet.py", "residual.py"):
        assert (tmp_path / name).is_file(), name  # the remote code travels with the weights
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, RSkipResNetConfig) and config.id2label[4] == "e"
    assert config.auto_map["AutoModelForImageClassification"].endswith("RSkipResNetForImageClassification")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, RSkipResNetForImageClassification)
    x = pixels()
    torch.testing.assert_close(loaded(x).logits, model(x).logits)
    trunk = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(trunk, RSkipResNetModel)
    torch.testing.assert_close(trunk(x).pooler_output, model.resnet(x).pooler_output)


def test_remote_code_load_without_the_package(tmp_path) -> None:
    register_auto_classes()
    model = RSkipResNetForImageClassification(tiny_config("rskip_ln", 3, residual_norm="batch")).eval()
    randomize_norms(model)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    x = pixels()
    torch.save({"x": x, "expected": model(x).logits}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["hf_rskip"] = None  # any `import hf_rskip` now raises ImportError
        try:
            import hf_rskip
        except ImportError:
            pass
        else:
            raise SystemExit("hf_rskip importable")
        import torch
        from transformers import AutoConfig, AutoModelForImageClassification
        io = torch.load({str(tmp_path / "io.pt")!r})
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert (config.residual_scheme, config.skip_lambda, config.residual_norm) == ("rskip_ln", 3, "batch")
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        torch.testing.assert_close(model(io["x"]).logits, io["expected"])
        print("REMOTE_OK", type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": "",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK RSkipResNetForImageClassification" in result.stdout


def test_pipeline_with_the_saved_image_processor(tmp_path) -> None:
    from PIL import Image
    from transformers import pipeline

    from hf_rskip.data.images import build_image_processor, normalize_images

    register_auto_classes()
    names = {i: f"class_{i}" for i in range(5)}
    model = RSkipResNetForImageClassification(
        tiny_config(id2label=names, label2id={v: k for k, v in names.items()})
    ).eval()
    randomize_norms(model)
    model.save_pretrained(tmp_path)
    build_image_processor(image_size=16).save_pretrained(tmp_path)

    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    classifier = pipeline("image-classification", model=str(tmp_path))
    predictions = classifier([Image.fromarray(a) for a in arrays], top_k=5)

    # the pipeline's preprocessing is this package's evaluation transform
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    with torch.no_grad():
        probabilities = model(normalize_images(batch)).logits.softmax(-1)
    for prediction, probs in zip(predictions, probabilities):
        assert [p["label"] for p in prediction] == [names[int(i)] for i in probs.argsort(descending=True)]
        assert prediction[0]["score"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_every_scheme_is_covered() -> None:
    assert {scheme for scheme, _ in SCHEME_LAMBDAS} == set(RESIDUAL_SCHEMES)


@pytest.mark.parametrize("where", ["call", "config"])
def test_return_dict_false_gives_the_output_as_a_tuple(where: str) -> None:
    model = RSkipResNetForImageClassification(tiny_config()).eval()
    x, labels = pixels(), torch.tensor([0, 4, 2])
    calls = {
        "classifier": lambda **kw: model(x, labels=labels, output_hidden_states=True, **kw),
        "trunk": lambda **kw: model.resnet(x, output_hidden_states=True, **kw),
    }
    with torch.no_grad():
        expected = {name: call().to_tuple() for name, call in calls.items()}
        for name, call in calls.items():
            if where == "call":
                got = call(return_dict=False)
            else:
                model.config.return_dict = False  # the trunk shares the config
                try:
                    got = call()
                finally:
                    model.config.return_dict = True
            assert isinstance(got, tuple) and len(got) == len(expected[name])
            torch.testing.assert_close(got[0], expected[name][0], rtol=0, atol=0)
            torch.testing.assert_close(got[-1], expected[name][-1], rtol=0, atol=0)


def test_forward_signatures_carry_transformers_typed_kwargs() -> None:
    import inspect

    from transformers.processing_utils import Unpack
    from transformers.utils import TransformersKwargs

    for cls in (RSkipResNetForImageClassification, RSkipResNetModel):
        kwargs = inspect.signature(cls.forward, eval_str=True).parameters["kwargs"]
        assert kwargs.annotation == Unpack[TransformersKwargs], cls.__name__
