"""Demo helpers for snap2shop: a synthetic fashion catalogue and the scripts that use it."""
