"""`pipeline("rskip-translation")`: transformers 5 dropped its translation pipeline; this gives it back.

`save_pretrained` of the translation model copies this file into the folder and declares it in the config
(`custom_pipelines`), so `pipeline("rskip-translation", model=folder, trust_remote_code=True)` works where this
package is not installed: it must import nothing but transformers and the standard library.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


class RSkipTranslationPipeline(Pipeline):
    """Translates text with any encoder-decoder model and the tokenizer saved beside it.

    Call it with a string or a list of strings; keyword arguments other than the pipeline's own
    (`batch_size`, `num_workers`, `max_source_length`, `clean_up_tokenization_spaces`) go to
    `model.generate` (`num_beams`, `max_new_tokens`, `do_sample`, `length_penalty`, ...). As transformers 4's
    translation pipeline: a string gives `[{"translation_text": str}]`, a list of strings a flat list with one such
    dict per input; with `num_return_sequences=k > 1`, each input gives a list of k dicts.

    Example:
        >>> translator = pipeline("rskip-translation", model="path/to/folder")  # doctest: +SKIP
        >>> translator(["a small dog runs .", "two men talk ."], num_beams=4, batch_size=2)  # doctest: +SKIP
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    _pipeline_calls_generate = True

    def __call__(self, inputs: str | list[str], **kwargs: Any) -> list[dict] | list[list[dict]]:
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(one) == 1 for one in result):
            return [one[0] for one in result]
        return result

    def _sanitize_parameters(
        self,
        max_source_length: int | None = None,
        clean_up_tokenization_spaces: bool | None = None,
        **generate_kwargs: Any,
    ) -> tuple[dict, dict, dict]:
        preprocess = {} if max_source_length is None else {"max_source_length": max_source_length}
        postprocess = {}
        if clean_up_tokenization_spaces is not None:
            postprocess["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess, {"generate_kwargs": generate_kwargs}, postprocess

    def preprocess(self, text: str, max_source_length: int | None = None) -> dict:
        if not isinstance(text, str):
            raise TypeError(f"rskip-translation expects str inputs, got {type(text).__name__}")
        # T5's relative positions have no length limit (and no max_position_embeddings): truncate only if asked
        max_length = max_source_length or getattr(self.model.config, "max_position_embeddings", None)
        return self.tokenizer(text, return_tensors="pt", truncation=max_length is not None, max_length=max_length)

    def _forward(self, model_inputs: dict, generate_kwargs: dict) -> dict:
        model_inputs.pop("token_type_ids", None)
        kwargs = dict(generate_kwargs)
        if "generation_config" not in kwargs and getattr(self, "generation_config", None) is not None:
            kwargs["generation_config"] = self.generation_config
        output_ids = self.model.generate(**model_inputs, **kwargs)
        # (batch · sequences, T) -> (batch, sequences, T): a batched output is split per input along dim 0
        batch = model_inputs["input_ids"].shape[0]
        return {"output_ids": output_ids.reshape(batch, -1, *output_ids.shape[1:])}

    def postprocess(self, model_outputs: dict, clean_up_tokenization_spaces: bool = False) -> list[dict]:
        texts = self.tokenizer.batch_decode(
            model_outputs["output_ids"][0],  # (sequences, T) of one input
            skip_special_tokens=True,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        return [{"translation_text": t} for t in texts]


PIPELINE_REGISTRY.register_pipeline(
    "rskip-translation", pipeline_class=RSkipTranslationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
)
