"""DRY, don't repeat yourself (llama.cpp's ``llama_sampler_dry``): not yet computed by evalkit's engine, which
refuses a setting that sets it (see :func:`evalkit.generation.sampling.RowParams.from_settings`)."""

TRANSFORMS: dict = {}
