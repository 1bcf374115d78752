"""`pipeline("rskip-translation")`: transformers 5 dropped its translation pipeline; this gives it back."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForSeq2SeqLM, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY


class RSkipTranslationPipeline(Pipeline):
    """Translates text with any encoder-decoder model and the tokenizer saved beside it.

    Call it with a string or a list of strings; keyword arguments other than the pipeline's own
    (`batch_size`, `num_workers`, `max_source_length`, `clean_up_tokenization_spaces`) go to
    `model.generate` (`num_beams`, `max_new_tokens`, `do_sample`, `length_penalty`, ...). Each input
    gives `{"translation_text": str}`.

    Example:
        >>> translator = pipeline("rskip-translation", model="path/to/folder")  # doctest: +SKIP
        >>> translator(["a small dog runs .", "two men talk ."], num_beams=4, batch_size=2)  # doctest: +SKIP
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True
    _pipeline_calls_generate = True

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
        max_length = max_source_length or self.model.config.max_position_embeddings
        return self.tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)

    def _forward(self, model_inputs: dict, generate_kwargs: dict) -> dict:
        model_inputs.pop("token_type_ids", None)
        kwargs = dict(generate_kwargs)
        if "generation_config" not in kwargs and getattr(self, "generation_config", None) is not None:
            kwargs["generation_config"] = self.generation_config
        return {"output_ids": self.model.generate(**model_inputs, **kwargs)}

    def postprocess(self, model_outputs: dict, clean_up_tokenization_spaces: bool = False) -> list[dict]:
        texts = self.tokenizer.batch_decode(
            model_outputs["output_ids"],
            skip_special_tokens=True,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        return [{"translation_text": t} for t in texts]


PIPELINE_REGISTRY.register_pipeline(
    "rskip-translation", pipeline_class=RSkipTranslationPipeline, pt_model=AutoModelForSeq2SeqLM, type="text"
)
