"""The stages of the sampling chain beyond the core four (temperature, top-k, top-p, min-p, in
:mod:`evalkit.generation.sampling`): one module per family, each a batched transform with per-row parameters.

- :mod:`.cutoffs`: typical, epsilon, eta (transformers' warpers);
- :mod:`.sigma`: top-n-sigma (llama.cpp's);
- :mod:`.penalties`: repetition, presence and frequency penalties over a per-row scope, no-repeat n-grams,
  min tokens;
- :mod:`.xtc`: XTC (exclude top choices), drawing from the row's own random stream;
- :mod:`.mirostat`: mirostat v1 and v2, with their per-row state (mu);
- :mod:`.dry`: DRY (don't repeat yourself).
"""
