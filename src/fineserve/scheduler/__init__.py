"""Schedulers: `local` (per GPU, every iteration) and `placement` (global, models to GPUs)."""
