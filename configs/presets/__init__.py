"""Bundled preset sweeps (YAML), run with `evalkit run --preset NAME`."""
