"""The vision-language backend: any transformers image-text-to-text model (Qwen2-VL and
Qwen2.5-VL, LLaVA, SmolVLM, Idefics, ...) with its processor and chat template.

A prompt is an image with a question. The processor renders the conversation through the
model's chat template and turns it into token ids (image placeholders expanded) and the
image's model inputs (pixel values, grid sizes); decoding is evalkit's engine, each prompt
prefilled alone with its image's inputs, so temperature, top-p, top-k and min-p act exactly as they do for text models.
"""

from __future__ import annotations

import re
import time
from evalkit.config import SweepConfig, VLMModel
from evalkit.generation.base import PreparedPrompt
from evalkit.generation.decoding import ENGINE_KNOBS, ENGINE_ORDERS, ENGINE_OWN_ORDER, ENGINE_SUPPLIES, EngineBackend
from evalkit.generation.model import ModelSource, check_engine_model, quiet_libraries, resolve_dtype
from evalkit.generation.spec import BackendSpec
from evalkit.errors import ConfigError
from evalkit.prompts import Prompt

TEXT_INPUTS = ("input_ids", "attention_mask")  # the engine builds these itself


class VLMBackend(EngineBackend):
    prompt_inputs = True

    def __init__(self, config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        started = time.perf_counter()
        quiet_libraries()
        mc = config.model
        self._source = config.source
        dtype = resolve_dtype(mc.dtype, device)
        load_from, load_kwargs = source.load_args(mc.revision)
        status("loading the model")
        try:
            self.processor = AutoProcessor.from_pretrained(load_from, **load_kwargs)
            self.model = AutoModelForImageTextToText.from_pretrained(load_from, dtype=dtype, **load_kwargs)
        except (OSError, ValueError) as e:  # missing files, or a model that is not image-text-to-text
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            other = re.search(r"Unrecognized configuration class <class '[\w.]*?(\w+)'>", why)
            if other:
                why = f"its configuration is {other.group(1)}, not an image-text-to-text model's"
            raise ConfigError(f"cannot load {mc.id!r} as a vision-language model: {why}",
                              source=config.source, path="model.id") from None
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ConfigError(f"{mc.id!r} has no tokenizer in its processor", source=config.source, path="model.id")
        self.model.to(device).eval()
        ignored = self._special_tokens(self.tokenizer, self.model.generation_config)
        self.info = self._model_info(
            backend="vlm", model_id=mc.id, source=source, path=str(source.path or source.hub_id), dtype=dtype,
            device=device, started=started, ignored=ignored,
            has_chat_template=bool(getattr(self.processor, "chat_template", None)))

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        """Each prompt rendered with its image: the chat template puts the image before the question
        (in the first user message); without a template the text must hold the image token itself."""
        from PIL import Image

        use_template = self._use_template(chat_template)
        out = []
        for p in prompts:
            if use_template:
                rendered = self.processor.apply_chat_template(conversation(p, system_prompt, self._source),
                                                              tokenize=False, add_generation_prompt=True)
            else:
                token = getattr(self.processor, "image_token", None)
                if p.messages is not None:
                    raise ConfigError(f"prompt {p.id!r} is chat messages, but no chat template is applied",
                                      source=self._source, path="prompts")
                rendered = f"{system_prompt}\n\n{p.text}" if system_prompt else (p.text or "")
                if token and token not in rendered:
                    raise ConfigError(f"prompt {p.id!r} has no image token {token!r}; without a chat template the "
                                      f"prompt text must place it", source=self._source, path="prompts")
            with Image.open(p.image) as im:
                image = im.convert("RGB")
            inputs = self.processor(text=[rendered], images=[image], return_tensors="pt")
            ids = [int(t) for t in inputs["input_ids"][0]]
            self._check_fits(p.id, len(ids), max_new_tokens)
            extra = {k: v.to(self.model.dtype) if v.is_floating_point() else v
                     for k, v in inputs.items() if k not in TEXT_INPUTS and hasattr(v, "is_floating_point")}
            out.append(PreparedPrompt(prompt=p, rendered=rendered, token_ids=tuple(ids), chat_template=use_template,
                                      model_inputs=extra))
        return out


def conversation(prompt: Prompt, system_prompt: str | None, source: str | None = None) -> list[dict]:
    """The prompt as chat messages in the processors' content format, the image first in the first user turn."""
    messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]}
                for m in prompt.chat(system_prompt)]
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ConfigError(f"prompt {prompt.id!r} has no user message to attach its image to", source=source,
                          path="prompts")
    users[0]["content"].insert(0, {"type": "image"})
    return messages


def load(config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None) -> VLMBackend:
    return VLMBackend(config, source, device, status=status)


SPEC = BackendSpec(
    name="vlm", config=VLMModel, what="a vision-language sweep",
    summary="a transformers image-text-to-text model (captions, visual questions), decoded by evalkit's engine",
    needs=ENGINE_SUPPLIES, knobs=ENGINE_KNOBS, orders=ENGINE_ORDERS, own_order=ENGINE_OWN_ORDER, engine="evalkit",
    order_name="transformers", explicit_orders=True, remote=False, load=load, check_model=check_engine_model)
