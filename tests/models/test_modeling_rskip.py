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


@pytest.mark.parametrize("scheme,lam,carried,new,dropped", [
    ("rskip_ln", 3, 91, 40, 0),  # every Marian tensor has a place; norms 2 and 3 of 10 sublayers are new
    ("xskip_ln", 2, 91, 0, 0),  # the one norm per sublayer is Marian's: nothing new, so no warning
    ("pre_ln", None, 71, 24, 20),  # the 20 post-sum norm tensors dropped; 10 pre-norms and 2 final norms new
    ("xskip", 2, 71, 0, 20),
])
def test_from_marian_logs_exact_counts(scheme, lam, carried, new, dropped, monkeypatch):
    import hf_rskip.models.modeling_rskip as modeling

    warnings: list[str] = []
    monkeypatch.setattr(modeling.logger, "warning", lambda msg, *a, **k: warnings.append(str(msg)))
    marian = random_marian()
    total = len(marian.state_dict())
    assert total == 91 and carried + dropped == total
    options = {"residual_scheme": scheme} if lam is None else {"residual_scheme": scheme, "skip_lambda": lam}
    _, info = RSkipForConditionalGeneration.from_marian(marian, output_loading_info=True, **options)
    assert (len(info["initialized"]), len(info["dropped"])) == (new, dropped)
    if not new and not dropped:
        assert warnings == []
        return
    assert len(warnings) == 1
    assert f"{carried} of {total} Marian tensors carried over" in warnings[0]
    assert (f"{new} new tensors start freshly initialised" in warnings[0]) == (new > 0)
    assert (f"{dropped} Marian norm tensors dropped" in warnings[0]) == (dropped > 0)


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


# --- transformers' conventions: tuples on request, typed keyword arguments -------------------------

def _assert_same_tuple(got, expected) -> None:
    assert isinstance(got, tuple) and len(got) == len(expected)
    for a, b in zip(got, expected):
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        elif isinstance(b, tuple):
            _assert_same_tuple(a, b)
        else:  # the cache
            assert type(a) is type(b)


@pytest.mark.parametrize("where", ["call", "config"])
def test_return_dict_false_gives_the_output_as_a_tuple(where):
    """`return_dict=False`, passed or set in the config, gives `ModelOutput.to_tuple()` from every model class."""
    model = make_model(attn="eager")
    inputs = batch()
    flags = dict(output_hidden_states=True, output_attentions=True)
    dec = torch.zeros(3, 4, dtype=torch.long)
    encoder, decoder = model.model.encoder, model.model.decoder
    memory = torch.randn(3, 9, 32)
    calls = {
        "lm": lambda m, **kw: m(**inputs, **flags, **kw),
        "bare": lambda m, **kw: m.model(input_ids=inputs["input_ids"], decoder_input_ids=dec, use_cache=True, **kw),
        "encoder": lambda m, **kw: encoder(input_ids=inputs["input_ids"], **flags, **kw),
        "decoder": lambda m, **kw: decoder(input_ids=dec, encoder_hidden_states=memory, **flags, **kw),
    }
    expected = {name: call(model).to_tuple() for name, call in calls.items()}
    for name, call in calls.items():
        if where == "call":
            got = call(model, return_dict=False)
        else:
            for config in {id(m.config): m.config for m in (model, model.model, encoder, decoder)}.values():
                config.return_dict = False
            try:
                got = call(model)
            finally:
                for config in {id(m.config): m.config for m in (model, model.model, encoder, decoder)}.values():
                    config.return_dict = True
        _assert_same_tuple(got, expected[name])
    assert expected["lm"][0].ndim == 0 and expected["lm"][1].shape == (3, 7, 61)  # (loss, logits, ...)


def test_a_config_with_return_dict_false_still_generates_and_trains(tmp_path):
    model = make_model()
    model.config.return_dict = False
    inputs = batch()
    out = model(**inputs)
    assert isinstance(out, tuple) and out[0].ndim == 0
    out[0].backward()
    generated = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], num_beams=2,
                               max_new_tokens=4)
    assert generated.shape[0] == 3
    model.save_pretrained(tmp_path)
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path).config.return_dict is False


def test_forward_signatures_carry_transformers_typed_kwargs():
    import inspect

    from transformers.processing_utils import Unpack
    from transformers.utils import TransformersKwargs

    from hf_rskip.models.modeling_rskip import RSkipDecoder, RSkipDecoderLayer, RSkipEncoder, RSkipEncoderLayer

    for cls in (RSkipForConditionalGeneration, RSkipModel, RSkipEncoder, RSkipDecoder, RSkipEncoderLayer,
                RSkipDecoderLayer):
        kwargs = inspect.signature(cls.forward, eval_str=True).parameters["kwargs"]
        assert kwargs.annotation == Unpack[TransformersKwargs], cls.__name__


# --- resizing the vocabularies ---------------------------------------------------------------------

@pytest.mark.parametrize("new_size,multiple", [(70, None), (50, None), (70, 16)])
def test_resize_token_embeddings_resizes_the_logits_bias(new_size, multiple):
    model = make_model()
    bias = model.final_logits_bias.clone()
    model.resize_token_embeddings(new_size, pad_to_multiple_of=multiple, mean_resizing=False)
    size = new_size if multiple is None else 80
    assert model.model.shared.weight.shape[0] == model.lm_head.weight.shape[0] == size
    assert model.final_logits_bias.shape == (1, size)
    assert (model.config.vocab_size, model.config.decoder_vocab_size) == (size, size)
    keep = min(size, 61)
    assert torch.equal(model.final_logits_bias[:, :keep], bias[:, :keep])  # the old entries keep their values
    assert (model.final_logits_bias[:, keep:] == 0).all()
    assert model.lm_head.weight is model.model.shared.weight
    out = model(**{k: v.clamp(max=size - 1) for k, v in batch().items()})
    assert out.logits.shape == (3, 7, size) and torch.isfinite(out.loss)


def test_unshared_embeddings_resize_each_side():
    model = make_model(share_encoder_decoder_embeddings=False, decoder_vocab_size=50)
    assert model.model.get_decoder_input_embeddings() is model.model.decoder.embed_tokens
    # the source side: the decoder, its head and the bias stay as they are
    model.resize_token_embeddings(70, mean_resizing=False)
    assert model.model.encoder.embed_tokens.weight.shape[0] == 70 and model.config.vocab_size == 70
    assert model.model.decoder.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0] == 50
    assert model.final_logits_bias.shape == (1, 50) and model.lm_head.out_features == 50
    # the target side
    bias = model.final_logits_bias.clone()
    new = model.resize_decoder_token_embeddings(55)
    assert new is model.get_decoder_input_embeddings() is model.model.decoder.embed_tokens
    assert new.weight.shape[0] == model.lm_head.weight.shape[0] == 55 and model.config.decoder_vocab_size == 55
    assert model.lm_head.weight is new.weight and model.lm_head.out_features == 55
    assert model.final_logits_bias.shape == (1, 55) and torch.equal(model.final_logits_bias[:, :50], bias)
    labels = batch()["labels"].clamp(max=54)
    out = model(input_ids=batch()["input_ids"], labels=labels)
    assert out.logits.shape == (3, 7, 55) and torch.isfinite(out.loss)
    generated = model.generate(input_ids=batch()["input_ids"], max_new_tokens=3)
    assert generated.max() < 55
    # a replacement decoder embedding goes where the decoder reads it
    replacement = torch.nn.Embedding(55, 32, padding_idx=0)
    model.set_decoder_input_embeddings(replacement)
    assert model.model.decoder.embed_tokens is replacement and model.get_decoder_input_embeddings() is replacement


def test_decoder_side_methods_refuse_shared_embeddings():
    model = make_model()
    for call in (lambda: model.resize_decoder_token_embeddings(70), model.get_decoder_input_embeddings,
                 lambda: model.set_decoder_input_embeddings(torch.nn.Embedding(70, 32))):
        with pytest.raises(ValueError, match="share_encoder_decoder_embeddings"):
            call()


def test_resized_model_round_trips(tmp_path):
    model = make_model(share_encoder_decoder_embeddings=False, decoder_vocab_size=50)
    model.resize_token_embeddings(66, mean_resizing=False)
    model.resize_decoder_token_embeddings(57)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.final_logits_bias.shape == (1, 57)
    inputs = {"input_ids": batch()["input_ids"], "labels": batch()["labels"].clamp(max=56)}
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


# --- the generation config a training run saves ------------------------------------------------------

def _generate_and_capture(folder, **generate_kwargs) -> tuple[torch.Tensor, list[str]]:
    """Loads `folder`, generates, and returns the output with every warning transformers logged or raised."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler, verbosity = Keep(level=logging.WARNING), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(handler)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            output = model.generate(input_ids=batch()["input_ids"], **generate_kwargs)
    finally:
        hf_logging.get_logger().removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    return output, records + [str(w.message) for w in caught]


@pytest.mark.parametrize("stored", ["max_new_tokens", "max_length"])
def test_a_saved_training_generation_config_leaves_the_callers_max_new_tokens_alone(stored, tmp_path):
    """The translation job stores the run's decoding settings as the model's generation config; with a bound given
    as `max_new_tokens` a caller's own `max_new_tokens` no longer meets a stored `max_length` (and its warning)."""
    from types import SimpleNamespace

    from hf_rskip.training.translation import TranslationJob

    model = make_model()
    job = SimpleNamespace(args=SimpleNamespace(num_beams=2, length_penalty=1.0),
                          data_args=SimpleNamespace(max_target_length=12))
    TranslationJob._set_generation_config(job, model)
    if stored == "max_length":  # what the job saved before: the warning this test watches for must show
        model.generation_config.max_new_tokens, model.generation_config.max_length = None, 12
    model.save_pretrained(tmp_path)

    output, warned = _generate_and_capture(tmp_path, max_new_tokens=3)
    assert output.shape[1] <= 1 + 3
    clash = [w for w in warned if "max_length" in w]
    if stored == "max_length":
        assert clash and "Both `max_new_tokens` (=3) and `max_length`" in clash[0]
        return
    assert clash == [], clash
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert saved["max_new_tokens"] == 12 and "max_length" not in saved
    output, warned = _generate_and_capture(tmp_path)  # no bound from the caller: the run's own
    assert output.shape[1] <= 1 + 12 and not [w for w in warned if "max_length" in w]


def test_an_untied_head_is_resized_with_the_decoder_vocabulary():
    model = make_model(share_encoder_decoder_embeddings=False, decoder_vocab_size=50, tie_word_embeddings=False)
    assert model.lm_head.weight is not model.model.decoder.embed_tokens.weight
    head = model.lm_head.weight.detach().clone()
    model.resize_decoder_token_embeddings(55, mean_resizing=False)
    assert model.lm_head.weight is not model.model.decoder.embed_tokens.weight
    assert model.lm_head.weight.shape == (55, 32) and torch.equal(model.lm_head.weight[:50], head)
    assert model.final_logits_bias.shape == (1, 55)
    assert model(input_ids=batch()["input_ids"], labels=batch()["labels"].clamp(max=54)).logits.shape == (3, 7, 55)


def test_the_trainer_s_num_items_in_batch_normalises_the_loss() -> None:
    """Seq2SeqTrainer passes num_items_in_batch (the targets of all accumulated micro-batches) to a model whose forward
    takes **kwargs and then does not divide by the accumulation steps: the loss must be the sum over that count."""
    torch.manual_seed(0)
    model = RSkipForConditionalGeneration(tiny_text_config()).eval()
    labels = torch.tensor([[5, 6, 7, 1], [8, 9, 1, -100]])
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 1], [9, 10, 1, 0]]), "labels": labels}
    mean = model(**inputs).loss
    tokens = int((labels != -100).sum())
    summed = model(**inputs, num_items_in_batch=torch.tensor(2 * tokens)).loss
    torch.testing.assert_close(summed, mean / 2)
