"""Training: one loop (loop.py, with its reproducible global batches) for every objective, and what
it is built from: processes and DDP (distributed.py), the EMA (ema.py)."""
