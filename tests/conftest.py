"""Shared fixtures: tiny seeded configs, offline Hub, the path of the staged real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# pytest -n 2 runs two workers on a 2-core machine: one thread each avoids an oversubscribed OpenMP pool,
# which made the models' tests 2-7x slower here.
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _shared_data() -> Path:
    from hf_rskip.data.recipes import shared_data_dir

    return shared_data_dir()


SHARED_DATA = _shared_data()

#: Every (scheme, λ) the text tester covers: λ ∈ {1, 2, 3} where the scheme has a λ.
SCHEME_LAMBDAS = [
    ("post_ln", 1),
    ("pre_ln", 1),
    ("xskip", 1),
    ("xskip", 2),
    ("xskip", 3),
    ("xskip_ln", 1),
    ("xskip_ln", 2),
    ("xskip_ln", 3),
    ("rskip_ln", 1),
    ("rskip_ln", 2),
    ("rskip_ln", 3),
]


def tiny_text_config(**overrides):
    from hf_rskip import RSkipConfig

    kwargs = dict(
        vocab_size=61,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=48,
        decoder_ffn_dim=48,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        forced_eos_token_id=None,
        dropout=0.0,
    )
    kwargs.update(overrides)
    return RSkipConfig(**kwargs)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"staged data not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "compile: runs torch.compile with the inductor backend (tens of seconds of C++ compilation on a CPU); "
        "deselect with -m 'not compile'",
    )
