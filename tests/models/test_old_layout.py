"""Folders saved by hf_rskip 0.1 (modules at the package's top level) still load after the reorganisation into
models/ data/ training/: with the package's classes, and as remote code where the package is absent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

from tests.conftest import FIXTURES

# The expected logits were computed on another CPU (AVX-512): float32 kernels round differently from one instruction
# set to another (5.6e-9 at most on an AVX2 CPU), so the comparison is float32's, not bit for bit. A weight that
# failed to load, or a block wired differently, moves the logits by orders of magnitude more.
FLOAT32_ACROSS_CPUS = dict(rtol=1.3e-6, atol=1e-5)


def test_a_translation_model_saved_before_the_change_loads_and_gives_the_same_logits() -> None:
    from transformers import AutoModelForSeq2SeqLM

    import hf_rskip

    folder = FIXTURES / "old_layout_rskip"
    model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    assert isinstance(model, hf_rskip.RSkipForConditionalGeneration)
    logits = model(input_ids=torch.tensor([[5, 6, 7, 1]]), decoder_input_ids=torch.tensor([[0, 5, 9]])).logits
    torch.testing.assert_close(logits, torch.load(folder / "expected_logits.pt"), **FLOAT32_ACROSS_CPUS)


def test_a_resnet_saved_before_the_change_loads_and_gives_the_same_logits() -> None:
    from transformers import AutoModelForImageClassification

    import hf_rskip

    folder = FIXTURES / "old_layout_resnet"
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert isinstance(model, hf_rskip.RSkipResNetForImageClassification)
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(pixel_values=pixels).logits, torch.load(folder / "expected_logits.pt"),
                               **FLOAT32_ACROSS_CPUS)


def test_old_folders_load_as_remote_code_without_the_package() -> None:
    probe = textwrap.dedent(f"""
        import sys, torch
        sys.modules['hf_rskip'] = None  # `import hf_rskip` fails, wherever the package is installed
        from transformers import AutoModelForImageClassification, AutoModelForSeq2SeqLM
        text = AutoModelForSeq2SeqLM.from_pretrained({str(FIXTURES / 'old_layout_rskip')!r}, trust_remote_code=True)
        image = AutoModelForImageClassification.from_pretrained({str(FIXTURES / 'old_layout_resnet')!r},
                                                                trust_remote_code=True)
        print(type(text).__module__.split('.')[0], type(image).__module__.split('.')[0])
        """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd="/", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["transformers_modules", "transformers_modules"]


def test_a_pre_ln_resnet_saved_with_unused_down_sampling_norms_loads_and_gives_the_same_logits() -> None:
    """hf_rskip 0.2 built a norm at pre_ln's down-sampling blocks whose output was thrown away: its weights (and
    BatchNorm statistics) are in such folders. They are ignored on load, with no error and the same logits."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging

    import hf_rskip

    folder = FIXTURES / "pre_ln_resnet_with_unused_norms"
    stale = sorted(k for k in load_file(folder / "model.safetensors") if "layers.0.residual.norms" in k
                   and "stages.0." not in k)
    assert len(stale) == 10  # weight, bias, running mean / var, batch count at stages 1 and 2
    logging.set_verbosity_warning()
    model, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, hf_rskip.RSkipResNetForImageClassification)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not set(info["unexpected_keys"]) - set(stale)
    assert not any(n in stale for n, _ in model.named_parameters())
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.eval()(pixel_values=pixels).logits, torch.load(folder / "expected_logits.pt"),
                               **FLOAT32_ACROSS_CPUS)
