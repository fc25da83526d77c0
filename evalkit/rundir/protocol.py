"""What must be equal for two runs' numbers to be compared: the prompts (and the images of an
image-to-text sweep, by content), the length limit, samples per prompt, stop strings, the chat
template choice and system prompt. The model, the
seed, the machine and the engine that sampled may differ: telling their effect apart is what a comparison
is for (a comparison across engines, evalkit's and vLLM's, is marked as one: ``engine``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from evalkit.rundir.reader import Run

FIELDS = ("max_new_tokens", "samples_per_prompt", "stop")


def protocol(run: Run) -> dict[str, Any]:
    """The run's protocol: as its manifest stores it, else (a run not yet complete, an older run) read off
    its files."""
    return run.manifest.protocol if run.manifest.protocol is not None else compute_protocol(run)


def build_protocol(kind: str, config: dict[str, Any], prompts: dict[str, str], *, engine: str | None = None,
                   prompt_images: dict[str, str] | None = None, references: str | None = None) -> dict[str, Any]:
    """The protocol of a run of ``kind`` made by the resolved ``config`` (a run's config.yaml) over ``prompts``
    (id -> text): what a finished run records and what a gate plans before its run (``engine``, images and
    references where known)."""
    out: dict[str, Any] = {"kind": kind, **({"engine": engine} if engine is not None else {}),
                           **{f: config.get(f) for f in FIELDS}}
    prompts_config = config.get("prompts") if isinstance(config.get("prompts"), dict) else {}
    out["chat_template"] = prompts_config.get("chat_template")
    out["system_prompt"] = prompts_config.get("system_prompt")
    if references:  # values against other references are other numbers
        out["references"] = references
    out["prompts"] = prompts
    if prompt_images is not None:
        out["prompt_images"] = prompt_images
    return out


def compute_protocol(run: Run) -> dict[str, Any]:
    """A run's protocol, read off its files."""
    manifest, images = run.manifest, None
    if (run.path / "prompts.jsonl").is_file():
        table = run.prompts
        prompts = dict(zip(table["id"].astype(str), table["prompt"].astype(str)))
        if "image_sha256" in table:
            images = dict(zip(table["id"].astype(str), table["image_sha256"].astype(str)))
    else:
        samples = run.samples
        prompts = dict(zip(samples["prompt_id"].astype(str), samples["prompt"].astype(str)))
    return build_protocol(manifest.kind, run.config, prompts, engine=manifest.model.engine_name,
                          prompt_images=images,
                          references=manifest.references.get("sha256") if manifest.references else None)


def differences(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Each way the two protocols differ, in words; empty when the runs are comparable."""
    out = []
    for key in sorted(set(base) | set(new)):
        a, b = base.get(key), new.get(key)
        if a == b or (key == "kind" and "sweep" in (a, b) and "scored" not in (a, b)):
            continue
        # only metrics against references depend on them: compare leaves those out; another engine is allowed,
        # and marked (see cross_engine)
        if key in ("references", "engine"):
            continue  # schema 2 called every sweep "sweep"; its protocol in an older index still does
        if key in ("prompts", "prompt_images") and isinstance(a, dict) and isinstance(b, dict):
            only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
            changed = sorted(k for k in set(a) & set(b) if a[k] != b[k])
            parts = [f"{len(only_a)} only in base ({', '.join(only_a[:3])})" if only_a else "",
                     f"{len(only_b)} only in new ({', '.join(only_b[:3])})" if only_b else "",
                     f"{len(changed)} with other {'text' if key == 'prompts' else 'images'} "
                     f"({', '.join(changed[:3])})" if changed else ""]
            out.append(f"{key.replace('_', ' ')} differ: " + "; ".join(p for p in parts if p))
        else:
            out.append(f"{key} differs: {json.dumps(a, ensure_ascii=False)} vs {json.dumps(b, ensure_ascii=False)}")
    return out


def cross_engine(base: dict[str, Any], new: dict[str, Any]) -> str | None:
    """A note when two runs were sampled by different engines (evalkit's, a vLLM version, a server): their
    random streams (and vLLM's filter order) differ, so their differences include the engines'. None when the
    engines are the same, or one is not known (a run recorded before engines were)."""
    a, b = base.get("engine"), new.get("engine")
    if not a or not b or a == b or "none" in (a, b):
        return None
    order = (", and vLLM's chain applies min_p before top_p, as evalkit's does only for settings that name order: vllm"
             if "vllm" in f"{a} {b}" else "")
    return (f"cross-engine comparison: base sampled by {a}, new by {b} (other random streams{order}): the changes "
            "include the engines' difference")


def config_hash(run: Run) -> str:
    """sha256 of the resolved config without where it was written."""
    config = {k: v for k, v in run.config.items() if k not in ("output_dir", "index")}
    return hashlib.sha256(json.dumps(config, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
