"""The jobs: the folder job (local.py) and the Ray job (ray_*.py), with what they share (common.py),
how inputs are found (discover.py) and how progress shows (progress.py). They import the engine
and outputs/, never the server."""
