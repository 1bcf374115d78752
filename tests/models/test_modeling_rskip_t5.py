"""The T5 family: the common checks over every scheme and both feed-forward/head kinds, the layout, the Auto classes,
the remote-code load, and transformers' own tools (the translation pipeline, Seq2SeqTrainer)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoModelForTextEncoding

from hf_rskip import RSkipT5Config, RSkipT5EncoderModel, RSkipT5ForConditionalGeneration, RSkipT5Model

#: (scheme, λ) pairs the T5 tester covers.
SCHEME_LAMBDAS = [("post_ln", 1), ("pre_ln", 1), ("xskip", 1), ("xskip", 2), ("xskip_ln", 2), ("rskip_ln", 1),
                  ("rskip_ln", 2), ("rskip_ln", 3)]
#: T5 v1.0 (ReLU feed-forward, tied and scaled head) and v1.1 (gated GELU, untied head).
KINDS = {"v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
         "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)}
CASES = [(s, lam, kind) for s, lam in SCHEME_LAMBDAS for kind in KINDS]
IDS = [f"{s}-{lam}-{kind}" for s, lam, kind in CASES]
ENCODER_LAYERS, DECODER_LAYERS = 2, 3  # unequal, so num_decoder_layers is seen to count
SUBLAYERS = 2 * ENCODER_LAYERS + 3 * DECODER_LAYERS


def tiny_t5_config(**overrides) -> RSkipT5Config:
    # initializer_factor scales T5's initialisation: at 1 (unit-variance embeddings and untied head) the schemes
    # without a norm (xskip, whose λ = 2 doubles the stream per sublayer; gated feed-forwards grow it quadratically)
    # reach values where softmax saturates and float32 tolerances mean nothing; 0.2 keeps every scheme comparable.
    kwargs = dict(vocab_size=61, d_model=32, d_kv=8, d_ff=48, num_layers=ENCODER_LAYERS,
                  num_decoder_layers=DECODER_LAYERS, num_heads=4, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                  initializer_factor=0.2)
    kwargs.update(overrides)
    return RSkipT5Config(**kwargs)


def make_model(scheme: str = "rskip_ln", lam: float | None = 2, kind: str = "v1.0", *, attn: str = "sdpa",
               **kw) -> RSkipT5ForConditionalGeneration:
    config = tiny_t5_config(residual_scheme=scheme, skip_lambda=lam, **KINDS[kind], **kw)
    model = RSkipT5ForConditionalGeneration._from_config(config, attn_implementation=attn)
    with torch.no_grad():  # non-default norms, so a load that re-initialised them would show
        for name, p in model.named_parameters():
            if ".norms." in name or "final_layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
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


def sources(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in inputs.items() if k != "labels"}


@pytest.mark.parametrize("scheme,lam,kind", CASES, ids=IDS)
class TestEveryScheme:
    def test_shapes_finite_and_gradients_reach_every_parameter(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind).train()
        out = model(**batch())
        assert out.logits.shape == (3, 7, 61)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
        out.loss.backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
        names = [n for n, _ in model.named_parameters()]
        norms_per_sublayer = {"xskip": 0, "rskip_ln": lam}.get(scheme, 1)
        for i in range(norms_per_sublayer):
            assert sum(n.endswith(f"norms.{i}.weight") for n in names) == SUBLAYERS
        assert not any(n.endswith(f"norms.{norms_per_sublayer}.weight") for n in names)
        assert ("lm_head.weight" in names) is (kind == "v1.1")  # a tied head is `shared`, listed once

    def test_save_load_equal(self, scheme, lam, kind, tmp_path):
        model = make_model(scheme, lam, kind)
        model.save_pretrained(tmp_path)
        loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
        assert type(loaded) is RSkipT5ForConditionalGeneration
        a, b = model.state_dict(), loaded.state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} changed on load"
        tied = loaded.lm_head.weight is loaded.shared.weight
        assert tied is (kind == "v1.0") and loaded.encoder.embed_tokens.weight is loaded.shared.weight
        inputs = batch()
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits, rtol=0, atol=0)

    def test_cached_equals_uncached_decoding(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind)
        inputs = sources(batch())
        kw = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False)
        with_cache = model.generate(**inputs, use_cache=True, **kw)
        without = model.generate(**inputs, use_cache=False, **kw)
        assert torch.equal(with_cache, without)
        assert (with_cache[:, 0] == 0).all()  # the T5 decoder starts from pad
        # and step by step, the cached logits equal the full forward's (the relative bias sees the past length)
        dec = with_cache[:, :6]
        full = model(**inputs, decoder_input_ids=dec).logits
        out = model(**inputs, decoder_input_ids=dec[:, :3], use_cache=True)
        steps, cache = [out.logits], out.cache
        for t in range(3, 6):
            out = model(**inputs, decoder_input_ids=dec[:, t: t + 1], cache=cache, use_cache=True,
                        encoder_outputs=(out.encoder_last_hidden_state,))
            cache = out.cache
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)

    def test_sampling_and_beam_search_with_cache_equal_without(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind)
        inputs = sources(batch())
        runs = []
        for use_cache in (True, False):
            torch.manual_seed(123)
            runs.append(model.generate(**inputs, do_sample=True, top_k=20, max_new_tokens=8, use_cache=use_cache))
        assert torch.equal(*runs)
        beams = [model.generate(**inputs, num_beams=3, max_new_tokens=6, use_cache=c) for c in (True, False)]
        assert torch.equal(*beams)

    def test_sdpa_equals_eager(self, scheme, lam, kind):
        sdpa = make_model(scheme, lam, kind, attn="sdpa")
        eager = make_model(scheme, lam, kind, attn="eager")
        eager.load_state_dict(sdpa.state_dict())
        inputs = batch()
        torch.testing.assert_close(sdpa(**inputs).logits, eager(**inputs).logits, rtol=1e-4, atol=1e-5)

    def test_padded_batch_equals_each_sentence_alone(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind)
        inputs = batch()
        batched = model(**inputs).logits
        generated = model.generate(**sources(inputs), num_beams=2, max_new_tokens=6, min_new_tokens=6)
        for i in range(3):
            n = int(inputs["attention_mask"][i].sum())
            alone = model(input_ids=inputs["input_ids"][i: i + 1, :n], labels=inputs["labels"][i: i + 1]).logits
            torch.testing.assert_close(batched[i: i + 1], alone, rtol=1e-4, atol=1e-5)
            one = model.generate(input_ids=inputs["input_ids"][i: i + 1, :n], num_beams=2, max_new_tokens=6,
                                 min_new_tokens=6)
            assert torch.equal(generated[i: i + 1], one)

    def test_gradient_checkpointing_same_gradients(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind).train()
        inputs = batch()
        model(**inputs).loss.backward()
        plain = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        model.activation_checkpointing_enable()
        assert model.is_activation_checkpointing
        model(**inputs).loss.backward()
        for n, p in model.named_parameters():  # float32 reordering only: 1e-5 of the tensor's largest entry
            scale = plain[n].abs().max().item()
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-5 * scale + 1e-9, msg=n)

    def test_hidden_states_and_attentions(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind, attn="eager")
        out = model(**batch(), output_hidden_states=True, output_attentions=True)
        assert len(out.encoder_hidden_states) == ENCODER_LAYERS + 1
        assert len(out.decoder_hidden_states) == DECODER_LAYERS + 1
        assert len(out.encoder_attentions) == ENCODER_LAYERS and out.encoder_attentions[0].shape == (3, 4, 9, 9)
        assert len(out.decoder_attentions) == DECODER_LAYERS and out.decoder_attentions[0].shape == (3, 4, 7, 7)
        assert len(out.cross_attentions) == DECODER_LAYERS and out.cross_attentions[0].shape == (3, 4, 7, 9)
        torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
        assert torch.allclose(out.decoder_attentions[0].sum(-1), torch.ones(3, 4, 7))

    def test_return_dict_false_gives_tuples(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind)
        inputs = batch()
        as_dict = model(**inputs)
        as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], as_dict.loss, rtol=0, atol=0)
        torch.testing.assert_close(as_tuple[1], as_dict.logits, rtol=0, atol=0)
        model.config.return_dict = False  # from the config too, and generation still works
        from_config = model(**inputs)
        assert isinstance(from_config, tuple) and torch.equal(from_config[1], as_dict.logits)
        assert model.generate(**sources(inputs), max_new_tokens=3).shape[0] == 3
        bare = RSkipT5Model(model.config).eval()
        assert isinstance(bare(input_ids=inputs["input_ids"], decoder_input_ids=inputs["input_ids"][:, :2]), tuple)

    def test_resize_token_embeddings(self, scheme, lam, kind):
        model = make_model(scheme, lam, kind)
        inputs = batch()
        before = model(**inputs).logits
        model.resize_token_embeddings(70)
        assert model.config.vocab_size == 70 and model.shared.weight.shape == (70, 32)
        assert model.lm_head.weight.shape == (70, 32)
        assert model.encoder.embed_tokens.weight is model.shared.weight
        assert model.decoder.embed_tokens.weight is model.shared.weight
        assert (model.lm_head.weight is model.shared.weight) is (kind == "v1.0")
        after = model(**inputs).logits
        assert after.shape == (3, 7, 70)
        torch.testing.assert_close(after[..., :61], before, rtol=1e-5, atol=1e-5)  # old rows kept
        model.resize_token_embeddings(50)
        assert model(**{k: v.clamp(max=49) for k, v in inputs.items()}).logits.shape == (3, 7, 50)


def test_pre_ln_has_final_norms_and_others_do_not():
    names = {n for n, _ in make_model("pre_ln", 1).named_parameters()}
    assert {"encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"} <= names
    for scheme, lam in (("rskip_ln", 2), ("post_ln", 1), ("xskip", 2)):
        names = {n for n, _ in make_model(scheme, lam).named_parameters()}
        assert not any("final_layer_norm" in n for n in names)


def test_rms_norm_is_bias_free_and_layer_norm_has_a_bias():
    rms = make_model("rskip_ln", 2)
    assert isinstance(rms.encoder.block[0].layer[0].layer_norm.norms[1], torch.nn.RMSNorm)
    assert not any(n.endswith("norms.0.bias") for n, _ in rms.named_parameters())
    layer = make_model("rskip_ln", 2, residual_norm="layer")
    assert isinstance(layer.encoder.block[0].layer[0].layer_norm.norms[1], torch.nn.LayerNorm)
    assert layer.encoder.block[0].layer[0].layer_norm.norms[0].eps == 1e-6  # T5's epsilon, through the alias


@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_the_rms_norm_is_t5s_norm(eps):
    """residual.build_norm("rms") is torch's RMSNorm; in float32 it computes T5LayerNorm exactly."""
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    from hf_rskip.models.residual import build_norm

    ours, t5 = build_norm("rms", 32, eps=eps), T5LayerNorm(32, eps=eps)
    with torch.no_grad():
        ours.weight.normal_()
        t5.weight.copy_(ours.weight)
    for scale in (1e-3, 1.0, 1e3):
        x = scale * torch.randn(4, 7, 32)
        torch.testing.assert_close(ours(x), t5(x), rtol=1e-6, atol=1e-6 * scale)


def test_learned_lambda_with_layer_norm_trains_and_round_trips(tmp_path):
    model = make_model("xskip_ln", 1.5, residual_norm="layer", learn_skip_lambda=True).train()
    lambdas = [p for n, p in model.named_parameters() if n.endswith("skip_lambda")]
    assert len(lambdas) == SUBLAYERS and all(p.item() == 1.5 for p in lambdas)
    model(**batch()).loss.backward()
    assert all(p.grad is not None for p in lambdas)
    with torch.no_grad():
        lambdas[0].fill_(0.25)
    model.save_pretrained(tmp_path)
    loaded = RSkipT5ForConditionalGeneration.from_pretrained(tmp_path)
    assert dict(loaded.named_parameters())["encoder.block.0.layer.0.layer_norm.skip_lambda"].item() == 0.25


def test_initialisation_follows_t5():
    config = tiny_t5_config(vocab_size=400, **KINDS["v1.1"], residual_scheme="pre_ln", initializer_factor=1.0)
    model = RSkipT5ForConditionalGeneration(config)
    d_model, d_kv, d_ff = 32, 8, 48
    attn = model.encoder.block[0].layer[0].SelfAttention
    ffn = model.encoder.block[0].layer[1].DenseReluDense
    expected = {"shared": (model.shared.weight, 1.0), "lm_head": (model.lm_head.weight, 1.0),
                "q": (attn.q.weight, (d_model * d_kv) ** -0.5), "k": (attn.k.weight, d_model ** -0.5),
                "o": (attn.o.weight, (4 * d_kv) ** -0.5), "wi_0": (ffn.wi_0.weight, d_model ** -0.5),
                "wo": (ffn.wo.weight, d_ff ** -0.5)}
    for name, (weight, std) in expected.items():
        assert abs(weight.std().item() / std - 1) < 0.25, name
    assert torch.equal(model.encoder.final_layer_norm.weight, torch.ones(32))


def test_loss_is_normalised_by_num_items_in_batch():
    model = make_model()
    inputs = batch()
    mean = model(**inputs).loss
    tokens = int((inputs["labels"] != -100).sum())
    summed = model(**inputs, num_items_in_batch=torch.tensor(2 * tokens)).loss
    torch.testing.assert_close(summed, mean / 2)


def test_auto_classes_give_the_bare_model_and_the_encoder(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    inputs = batch()
    bare = AutoModel.from_pretrained(tmp_path)
    assert type(bare) is RSkipT5Model
    out = bare(input_ids=inputs["input_ids"], decoder_input_ids=torch.zeros(3, 2, dtype=torch.long))
    assert out.last_hidden_state.shape == (3, 2, 32)
    encoder = AutoModelForTextEncoding.from_pretrained(tmp_path).eval()
    assert type(encoder) is RSkipT5EncoderModel
    hidden = encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    torch.testing.assert_close(hidden, model(**inputs).encoder_last_hidden_state, rtol=0, atol=0)
    assert isinstance(encoder(input_ids=inputs["input_ids"], return_dict=False), tuple)


def test_the_callers_config_is_not_edited():
    config = tiny_t5_config()
    RSkipT5EncoderModel(config)
    RSkipT5ForConditionalGeneration(config)
    assert config.is_encoder_decoder and config.use_cache and not config.is_decoder


def test_saved_folder_has_safetensors_generation_config_and_remote_code(tmp_path):
    make_model().save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "generation_config.json", "modeling_rskip_t5.py",
            "configuration_rskip_t5.py", "residual.py"} <= files
    assert "modeling_rskip.py" not in files  # the families do not import each other
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_rskip_t5.RSkipT5Config",
        "AutoModel": "modeling_rskip_t5.RSkipT5Model",
        "AutoModelForSeq2SeqLM": "modeling_rskip_t5.RSkipT5ForConditionalGeneration",
        "AutoModelForTextEncoding": "modeling_rskip_t5.RSkipT5EncoderModel",
    }
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 0


def test_remote_code_load_without_the_package(tmp_path):
    model = make_model("rskip_ln", 3, "v1.1")
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    inputs = sources(batch())
    expected = model.generate(**inputs, num_beams=3, max_new_tokens=8)
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
        from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, AutoModelForTextEncoding
        io = torch.load({str(tmp_path / "io.pt")!r})
        folder = {str(folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert config.residual_scheme == "rskip_ln" and config.skip_lambda == 3 and not config.tie_word_embeddings
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        out = model.generate(**io["inputs"], num_beams=3, max_new_tokens=8)
        assert torch.equal(out, io["expected"]), (out, io["expected"])
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "RSkipT5Model"
        encoder = AutoModelForTextEncoding.from_pretrained(folder, trust_remote_code=True)
        assert type(encoder).__name__ == "RSkipT5EncoderModel"
        print("REMOTE_OK", type(model).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_OK RSkipT5ForConditionalGeneration" in result.stdout


# --- transformers' tools ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task_and_tokenizer():
    from hf_rskip.data import builtin_translation_task, train_tokenizer

    task = builtin_translation_task(96, 16, 0, seed=3)
    texts = [r["translation"][lang] for r in task["train"] for lang in ("en", "xx")]
    return task, train_tokenizer(texts, 160)


def model_for(tokenizer, **overrides) -> RSkipT5ForConditionalGeneration:
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return RSkipT5ForConditionalGeneration(tiny_t5_config(**ids, **overrides))


def test_translation_pipeline_runs_a_t5_folder(task_and_tokenizer, tmp_path):
    from transformers import pipeline

    task, tokenizer = task_and_tokenizer
    model = model_for(tokenizer).eval()
    assert model.config.decoder_start_token_id == tokenizer.pad_token_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    translator = pipeline("rskip-translation", model=str(tmp_path))
    sentences = [r["translation"]["en"] for r in task["validation"]][:3]
    kw = dict(num_beams=2, max_new_tokens=5, min_new_tokens=5,
              suppress_tokens=[tokenizer.unk_token_id, tokenizer.pad_token_id])  # a random model likes <pad>
    one_by_one = [translator(s, **kw)[0] for s in sentences]
    batched = translator(sentences, batch_size=3, **kw)
    assert [b[0] if isinstance(b, list) else b for b in batched] == one_by_one
    assert all(isinstance(r["translation_text"], str) and r["translation_text"] for r in one_by_one)


def test_seq2seq_trainer_trains_and_evaluates(task_and_tokenizer, tmp_path):
    import numpy as np
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    task, tokenizer = task_and_tokenizer
    model = model_for(tokenizer, **KINDS["v1.1"], residual_scheme="rskip_ln", skip_lambda=2)
    before = model.shared.weight.detach().clone()

    def encode(split):
        return task[split].map(
            lambda b: tokenizer([t["en"] for t in b["translation"]], text_target=[t["xx"] for t in b["translation"]]),
            batched=True, remove_columns=task[split].column_names)

    def compute_metrics(pred):
        preds, labels = pred
        assert preds.ndim == 2 and preds.shape[0] == len(task["validation"])
        return {"exact": float(np.mean([(p[1:] != 0).any() for p in preds]))}

    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=3, per_device_train_batch_size=16,
                                    per_device_eval_batch_size=16, gradient_accumulation_steps=2, learning_rate=3e-3,
                                    predict_with_generate=True, generation_max_length=12, generation_num_beams=2,
                                    report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
                                    label_smoothing_factor=0.1, dataloader_num_workers=0)
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=encode("train"), eval_dataset=encode("validation"),
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), processing_class=tokenizer,
                             compute_metrics=compute_metrics)
    result = trainer.train()
    metrics = trainer.evaluate()
    assert np.isfinite(result.training_loss) and np.isfinite(metrics["eval_loss"])
    assert "eval_exact" in metrics
    assert not torch.equal(before, model.shared.weight.detach())


def test_forward_signatures_carry_transformers_typed_kwargs():
    import inspect

    from transformers.processing_utils import Unpack
    from transformers.utils import TransformersKwargs

    from hf_rskip.models import modeling_rskip_t5 as module

    classes = [getattr(module, name) for name in dir(module) if name.startswith("RSkipT5")
               and isinstance(getattr(module, name), type) and "forward" in vars(getattr(module, name))]
    typed = {cls.__name__ for cls in classes
             if "kwargs" in inspect.signature(cls.forward).parameters
             and inspect.signature(cls.forward, eval_str=True).parameters["kwargs"].annotation
             == Unpack[TransformersKwargs]}
    untyped = {cls.__name__ for cls in classes if "kwargs" in inspect.signature(cls.forward).parameters} - typed
    assert not untyped
    assert {"RSkipT5Model", "RSkipT5ForConditionalGeneration", "RSkipT5EncoderModel", "RSkipT5Stack"} <= typed
