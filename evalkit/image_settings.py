"""One point of a text-to-image grid: guidance scale, step count, and the scheduler (by name,
with its stochasticity parameter eta where it has one). Immutable, with a stable short id."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# scheduler name -> diffusers class name; the scheduler is built from the pipeline's own config
SCHEDULERS = {
    "ddim": "DDIMScheduler",  # deterministic at eta=0, ancestral-like noise for eta > 0
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",  # ancestral: fresh noise at every step
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
}
WITH_ETA = {"ddim"}


class ImageSetting(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    guidance_scale: float = Field(7.5, ge=0)  # classifier-free guidance; <= 1 turns it off
    num_inference_steps: int = Field(30, ge=1, le=1000)
    scheduler: Literal["ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms"] = "ddim"
    eta: float = Field(0.0, ge=0, le=1)  # DDIM only: 0 deterministic, 1 DDPM-like noise

    @model_validator(mode="after")
    def _eta_needs_ddim(self) -> ImageSetting:
        if self.eta and self.scheduler not in WITH_ETA:
            raise ValueError(f"eta applies to the ddim scheduler only, not {self.scheduler!r}")
        return self

    @property
    def id(self) -> str:
        """Stable short id such as ``g7.5-s30-ddim`` (``-e0.5`` when eta is set)."""
        parts = [f"g{self.guidance_scale:g}", f"s{self.num_inference_steps}", self.scheduler]
        if self.eta:
            parts.append(f"e{self.eta:g}")
        return "-".join(parts)

    def params(self) -> dict[str, float | int | str]:
        return {"guidance_scale": self.guidance_scale, "num_inference_steps": self.num_inference_steps,
                "scheduler": self.scheduler, "eta": self.eta}

    def __str__(self) -> str:
        return self.id
