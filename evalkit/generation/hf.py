"""The transformers text backend: any causal LM (hub id, local directory or GGUF file).

The model's forward pass is transformers'; decoding is evalkit's engine
(:mod:`evalkit.generation.engine`), so no model generation default (a repetition penalty, a
default top_k) can change a setting.
"""

from __future__ import annotations

import time

from evalkit.config import HFModel, SweepConfig
from evalkit.errors import ConfigError
from evalkit.generation.base import PreparedPrompt
from evalkit.generation.decoding import (ENGINE_KNOBS, ENGINE_ORDERS, ENGINE_OWN_ORDER, ENGINE_SUPPLIES, EngineBackend,
                                         TokenizedBackend)
from evalkit.generation.model import ModelSource, check_engine_model, quiet_libraries, resolve_dtype
from evalkit.generation.spec import BackendSpec
from evalkit.prompts import Prompt


class TransformersText(TokenizedBackend):
    """Prompts and texts through a transformers model's own tokenizer and chat template (``self.tokenizer``):
    shared by this backend and vLLM's, so that both engines see the same prompt tokens."""

    tokenizer: object

    def prepare(self, prompts: list[Prompt], *, chat_template: bool | str, system_prompt: str | None,
                max_new_tokens: int) -> list[PreparedPrompt]:
        use_template = self._use_template(chat_template)
        out = []
        for p in prompts:
            if use_template:
                rendered = self.tokenizer.apply_chat_template(p.chat(system_prompt), tokenize=False,
                                                              add_generation_prompt=True)
                ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
            else:
                if p.messages is not None:
                    raise ConfigError(f"prompt {p.id!r} is chat messages, but no chat template is applied",
                                      source=self._source, path="prompts")
                rendered = f"{system_prompt}\n\n{p.text}" if system_prompt else (p.text or "")
                ids = self.tokenizer(rendered)["input_ids"]
            self._check_fits(p.id, len(ids), max_new_tokens)
            out.append(PreparedPrompt(prompt=p, rendered=rendered, token_ids=tuple(ids), chat_template=use_template))
        return out

    def tokenize_texts(self, texts: list[str]) -> list[tuple[int, ...]]:
        """The model's token ids of each text, without special tokens (as a sample's new tokens are)."""
        return [tuple(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


class HFTextBackend(TransformersText, EngineBackend):
    """A transformers causal LM, decoded by evalkit's engine."""

    def __init__(self, config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        started = time.perf_counter()
        quiet_libraries()
        mc = config.model
        self._source = config.source
        dtype = resolve_dtype(mc.dtype, device)
        load_from, load_kwargs, converted_now = source.checkpoint(mc.revision, status)
        status("loading the model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(load_from, **load_kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype, **load_kwargs)
        except OSError as e:
            raise ConfigError(f"cannot load {mc.id!r}: {str(e).splitlines()[0]}", source=config.source,
                              path="model.id") from None
        self.model.to(device).eval()

        # The model's suggested generation defaults play no part in evalkit's decoding; record them.
        ignored = self._special_tokens(self.tokenizer, self.model.generation_config)

        self.info = self._model_info(
            backend="hf", model_id=mc.id, source=source, device=device, dtype=dtype, started=started, ignored=ignored,
            path=str(source.gguf.path if source.gguf else (source.path or source.hub_id)),
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)), converted_now=converted_now)

    # ------------------------------------------------------------------ references

    def score_continuations(self, prompt: PreparedPrompt, texts: list[str]) -> list[tuple[float, ...]]:
        """Each text's per-token log-probabilities under the model as a continuation of ``prompt`` (teacher
        forcing: log p(token | the prompt and the text's earlier tokens), temperature 1, unfiltered: the
        engine's ``logprob_model``). A text beyond the model's context is cut to fit after the prompt."""
        import torch

        from evalkit.generation.sampling import log_normaliser_and_entropy

        context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        start = len(prompt.token_ids)
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"][:max(0, context - start)]
            if not ids:
                out.append(())
                continue
            x = torch.tensor([list(prompt.token_ids) + ids], device=self.info.device)
            with torch.inference_mode():
                z = self.model(input_ids=x).logits[0, start - 1:-1].float()
                lse, _ = log_normaliser_and_entropy(z)
                logp = (z.gather(1, x[0, start:, None]) - lse)[:, 0].double()
            out.append(tuple(float(v) for v in logp.cpu()))
        return out

    def embed_continuations(self, prompt: PreparedPrompt | None, texts: list[str]):
        """The model's final-layer hidden state at the last token of each text read as a continuation of
        ``prompt`` (None: the text alone, after the tokenizer's own start tokens), float64 [texts, hidden]:
        the features MAUVE's paper takes from GPT-2-large, from this model."""
        import numpy as np
        import torch

        context = getattr(self.model.config, "max_position_embeddings", None) or 1 << 30
        head = list(prompt.token_ids) if prompt is not None else []
        out = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=prompt is None)["input_ids"]
            ids = (head + ids)[:context] or [self.pad_id]
            with torch.inference_mode():
                hidden = self.model(input_ids=torch.tensor([ids], device=self.info.device),
                                    output_hidden_states=True).hidden_states[-1][0, -1]
            out.append(hidden.double().cpu().numpy())
        return np.stack(out) if out else np.zeros((0, self.model.config.hidden_size))


def load(config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None) -> HFTextBackend:
    return HFTextBackend(config, source, device, status=status)


SPEC = BackendSpec(
    name="hf", config=HFModel, what="a text sweep",
    summary="a transformers causal LM (hub id, directory or GGUF), decoded by evalkit's engine",
    needs=ENGINE_SUPPLIES | {"model_features"}, knobs=ENGINE_KNOBS, orders=ENGINE_ORDERS,
    own_order=ENGINE_OWN_ORDER, order_name="transformers", explicit_orders=True, engine="evalkit", remote=False,
    load=load, check_model=check_engine_model)
