"""Evaluation: metrics, benchmark sets, restorers and the paper's tables (see docs/EVALUATION.md).

Modules (import what you need; this package imports nothing on its own):
- :mod:`.metrics`: the metric table, offline availability, pyiqa scoring.
- :mod:`.bench_sets`: the public ``test.jsonl`` format, set builders and readers.
- :mod:`.restorers`: the Restorer protocol, classical tools, the sequential tool
  chain, precomputed-output folders, and the resumable :func:`run_restorer`.
- :mod:`.scoring`: outputs on disk to per-image score rows (n/a with reasons).
- :mod:`.tables`: Tables II, III, IV, V, VI and VIII, image grids and bar charts.
- :mod:`.method_names`: what methods are called in tables, partitions and the app.
- :mod:`.stage`: the stage's store layout, the profile's bench sets, and moving them
  between the store and a local cache.
- :mod:`.method_runs`: one method on one bench set, restored (resumable) and scored.
- :mod:`.reporting`: every table, grid and chart from the scores in the store.
"""
