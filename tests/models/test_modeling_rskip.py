"""The common checks over every scheme and λ, Marian parity for post_ln, and the remote-code load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, MarianConfig, MarianMTModel

from hf_rskip import RSkipForConditionalGeneration, RSkipModel
from tests.conftest import SCHEME_LAMBDAS, tiny_text_config

IDS = [f"{s}-{lam}" for s, lam in SCHEME_LAMBDAS]


def make_model(scheme: str = "rskip_ln", lam: float = 2, *, attn: str = "sdpa", **kw) -> RSkipForConditionalGeneration:
    config = tiny_text_config(residual_scheme=scheme, skip_lambda=lam, **kw)
    model = RSkipForConditionalGeneration._from_config(config, attn_implementation=attn)
    with torch.no_grad():  # non-default norms and bias, so a load that re-initialised them would show
        for name, p in model.named_parameters():
            if ".norms." in name or ".layer_norm." in name:
                p.add_(0.1 * torch.randn_like(p))
        model.final_logits_bias.normal_(0, 0.1)
    return model.eval()


def batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 61, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    labels = torch.randint(2, 61, (3, 7), generator=g)
    labels[2, 5:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("scheme,lam", SCHEME_LAMBDAS, ids=IDS)
class TestEveryScheme:
    def test_shapes_finite_and_gradients_reach_every_parameter(self, scheme, lam):
        model = make_model(scheme, lam).train()
        out = model(**batch())
        assert out.logits.shape == (3, 7, 61)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        out.loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), name
                assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        num_norms = sum(1 for n, _ in model.named_parameters() if n.endswith("norms.0.weight"))
        layers = 2 * 2 + 2 * 3  # encoder: 2 sublayers, decoder: 3
        assert num_norms == (0 if scheme == "xskip" else layers)

    def test_save_load_equal(self, scheme, lam, tmp_path):
        model = make_model(scheme, lam)
        model.save_pretrained(tmp_path)
        loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
        assert type(loaded) is RSkipForConditionalGeneration
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} changed on load"
        inputs = batch()
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits, rtol=0, atol=0)

    def test_cached_equals_uncached_decoding(self, scheme, lam):
        model = make_model(scheme, lam)
        inputs = {k: v for k, v in batch().items() if k != "labels"}
        kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
        with_cache = model.generate(**inputs, use_cache=True, **kw)
        without = model.generate(**inputs, use_cache=False, **kw)
        assert torch.equal(with_cache, without)
        # and step by step, the cached logits equal the full forward's
        dec = with_cache[:, :6]
        full = model(**inputs, decoder_input_ids=dec).logits
        out = model(**inputs, decoder_input_ids=dec[:, :3], use_cache=True)
        steps = [out.logits]
        cache = out.cache
        for t in range(3, 6):
            out = model(**inputs, decoder_input_ids=dec[:, t : t + 1], cache=cache, use_cache=True,
                        encoder_outputs=(out.encoder_last_hidden_state,))
            cache = out.cache
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)

    def test_sampling_with_cache_equals_without(self, scheme, lam):
        model = make_model(scheme, lam)
        inputs = {k: v for k, v in batch().items() if k != "labels"}
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(123)
            runs.append(model.generate(**inputs, do_sample=True, top_k=20, max_new_tokens=8, use_cache=use_cache))
        assert torch.equal(*runs)

    def test_sdpa_equals_eager(self, scheme, lam):
        sdpa = make_model(scheme, lam, attn="sdpa")
        eager = make_model(scheme, lam, attn="eager")
        eager.load_state_dict(sdpa.state_dict())
        inputs = batch()
        torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, rtol=1e-4, atol=1e-5)

    def test_padded_batch_equals_each_sentence_alone(self, scheme, lam):
        model = make_model(scheme, lam)
        inputs = batch()
        batched = model(**inputs).logits
        generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   num_beams=2, max_new_tokens=6, min_new_tokens=6)
        for i in range(3):
            n = int(inputs["attention_mask"][i].sum())
            alone = model(input_ids=inputs["input_ids"][i : i + 1, :n], labels=inputs["labels"][i : i + 1]).logits
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=1e-4, atol=1e-5)
            one = model.generate(input_ids=inputs["input_ids"][i : i + 1, :n], num_beams=2, max_new_tokens=6,
                                 min_new_tokens=6)
            assert torch.equal(generated[i : i + 1], one)

    def test_gradient_checkpointing_same_gradients(self, scheme, lam):
        model = make_model(scheme, lam).train()
        inputs = batch()
        model(**inputs).loss.backward()
        plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
        model(**inputs).loss.backward()
        for n, p in model.named_parameters():
            if n in plain:
                torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-6)

    def test_hidden_states_and_attentions(self, scheme, lam):
        model = make_model(scheme, lam, attn="eager")
        out = model(**batch(), output_hidden_states=True, output_attentions=True)
        assert len(out.encoder_hidden_states) == 3 and len(out.decoder_hidden_states) == 3
        assert len(out.encoder_attentions) == 2 and out.encoder_attentions[0].shape == (3, 4, 9, 9)
        assert len(out.decoder_attentions) == 2 and out.decoder_attentions[0].shape == (3, 4, 7, 7)
        assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 4, 7, 9)
        torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)


def test_pre_ln_has_final_norms_and_others_do_not():
    names = {n for n, _ in make_model("pre_ln", 1).named_parameters()}
    assert {"model.encoder.layer_norm.weight", "model.decoder.layer_norm.weight"} <= names
    names = {n for n, _ in make_model("rskip_ln", 2).named_parameters()}
    assert not any(n.startswith(("model.encoder.layer_norm", "model.decoder.layer_norm")) for n in names)


def test_rms_norm_and_learned_lambda_train_and_round_trip(tmp_path):
    model = make_model("xskip_ln", 1.5, residual_norm="rms", learn_skip_lambda=True).train()
    lambdas = [p for n, p in model.named_parameters() if n.endswith("skip_lambda")]
    assert len(lambdas) == 10 and all(p.item() == 1.5 for p in lambdas)
    model(**batch()).loss.backward()
    assert all(p.grad is not None for p in lambdas)
    with torch.no_grad():
        lambdas[0].fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = RSkipForConditionalGeneration.from_pretrained(tmp_path)
    assert [n for n, _ in loaded.named_parameters() if n.endswith("skip_lambda")][0]
    assert dict(loaded.named_parameters())["model.encoder.layers.0.self_attn_layer_norm.skip_lambda"].item() == 0.25


def test_auto_model_gives_the_bare_encoder_decoder(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    bare = AutoModel.from_pretrained(tmp_path)
    assert type(bare) is RSkipModel
    out = bare(input_ids=batch()["input_ids"], decoder_input_ids=torch.zeros(3, 2, dtype=torch.long))
    assert out.last_hidden_state.shape == (3, 2, 32)


def test_tied_embeddings():
    model = make_model()
    assert model.lm_head.weight is model.model.shared.weight
    assert model.model.encoder.embed_tokens.weight is model.model.shared.weight
    assert model.model.decoder.embed_tokens.weight is model.model.shared.weight


def test_saved_folder_has_safetensors_generation_config_and_remote_code(tmp_path):
    make_model().save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_rskip.py",
            "configuration_rskip.py", "residual.py"} <= files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_rskip.RSkipConfig",
        "AutoModel": "modeling_rskip.RSkipModel",
        "AutoModelForSeq2SeqLM": "modeling_rskip.RSkipForConditionalGeneration",
    }


# --- Marian parity -------------------------------------------------------------------------------

def random_marian(**overrides) -> MarianMTModel:
    kwargs = dict(vocab_size=61, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
                  pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
                  activation_function="swish", scale_embedding=True)
    kwargs.update(overrides)
    marian = MarianMTModel(MarianConfig(**kwargs)).eval()
    with torch.no_grad():
        for name, p in marian.named_parameters():
            if "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
        marian.final_logits_bias.normal_(0, 0.5)
    return marian


@pytest.mark.parametrize("share", [True, False])
def test_post_ln_reproduces_marian(share, tmp_path):
    marian = random_marian(share_encoder_decoder_embeddings=share)
    marian.save_pretrained(tmp_path)
    for source in (marian, str(tmp_path)):
        ours, info = RSkipForConditionalGeneration.from_marian(source, output_loading_info=True)
        assert info == {"initialized": [], "dropped": []}
        assert ours.config.residual_scheme == "post_ln"
        inputs = batch()
        torch.testing.assert_close(ours(**inputs).logits, marian(**inputs).logits, rtol=0, atol=1e-5)
        gen = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=12)
        assert torch.equal(ours.generate(num_beams=4, **gen), marian.generate(num_beams=4, **gen))
        assert torch.equal(ours.generate(num_beams=1, **gen), marian.generate(num_beams=1, **gen))


def test_post_ln_marian_names_map_one_to_one():
    marian = random_marian()
    ours = RSkipForConditionalGeneration.from_marian(marian)
    theirs = {k.replace("_layer_norm.", "_layer_norm.norms.0.") for k in marian.state_dict()}
    assert theirs == set(ours.state_dict())


def test_from_marian_with_another_scheme_carries_shared_weights(monkeypatch):
    import hf_rskip.models.modeling_rskip as modeling

    warnings: list[str] = []  # transformers' logger may not propagate to caplog, depending on earlier tests
    monkeypatch.setattr(modeling.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    marian = random_marian()
    ours, info = RSkipForConditionalGeneration.from_marian(marian, residual_scheme="rskip_ln", skip_lambda=3,
                                                           output_loading_info=True)
    assert ours.config.skip_lambda == 3
    assert len(info["initialized"]) == 10 * 2 * 2  # norms 2 and 3 (weight + bias) of 10 sublayers
    assert len(warnings) == 1 and "40 new tensors start freshly initialised" in warnings[0]
    sd, msd = ours.state_dict(), marian.state_dict()
    assert torch.equal(sd["model.encoder.layers.1.fc1.weight"], msd["model.encoder.layers.1.fc1.weight"])
    assert torch.equal(sd["model.decoder.layers.0.final_layer_norm.norms.0.weight"],
                       msd["model.decoder.layers.0.final_layer_norm.weight"])
    assert torch.equal(sd["model.decoder.layers.0.final_layer_norm.norms.2.weight"], torch.ones(32))
    pre, info = RSkipForConditionalGeneration.from_marian(marian, residual_scheme="pre_ln", output_loading_info=True)
    assert len(info["dropped"]) == 20 and "model.encoder.layer_norm.weight" in info["initialized"]


def test_from_marian_rejects_other_objects():
    with pytest.raises(TypeError, match="MarianMTModel"):
        RSkipForConditionalGeneration.from_marian(make_model())


# --- remote code -----------------------------------------------------------------------------------

def test_remote_code_load_without_the_package(tmp_path):
    model = make_model("rskip_ln", 3)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    inputs = batch()
    expected = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], num_beams=3,
                              max_new_tokens=8)
    torch.save({"inputs": inputs, "expected": expected}, tmp_path / "io.pt")
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
        from transformers import AutoConfig, AutoModelForSeq2SeqLM
        io = torch.load({str(tmp_path / "io.pt")!r})
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModelForSeq2SeqLM.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert config.residual_scheme == "rskip_ln" and config.skip_lambda == 3
        out = model.generate(input_ids=io["inputs"]["input_ids"], attention_mask=io["inputs"]["attention_mask"],
                             num_beams=3, max_new_tokens=8)
        assert torch.equal(out, io["expected"]), (out, io["expected"])
        from transformers import AutoModel
        bare = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(bare).__name__ == "RSkipModel"
        print("REMOTE_OK", type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK RSkipForConditionalGeneration" in result.stdout
