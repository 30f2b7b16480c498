"""Training: one loop (loop.py) for every objective, and what it is built from: processes and DDP
(distributed.py), the EMA (ema.py), reproducible global batches (batches.py)."""
