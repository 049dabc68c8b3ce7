"""cotir-pipeline's domain library: plain Python, no Dagster imports.

Settings, object store, data stages, annotation, evaluation and the command
line live here; torch models live in :mod:`models`, the Dagster code location
in :mod:`assets`. Importing this package has no side effects.
"""

__version__ = "0.1.0"
