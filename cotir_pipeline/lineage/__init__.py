"""``sample_lineage``: one queryable index over every stage's per-sample rows.

Modules (import what you need; this package imports nothing on its own, so
``cotir lineage ID`` loads only the reader, not pyarrow.compute):

- :mod:`.schema`: the index's schema and layout, and where each stage writes its rows.
- :mod:`.build`: :func:`~.build.build_lineage` joins the rows each stage wrote (raw
  pair plan, pair manifest, annotations, filter decisions, training shards and runs,
  bench sets, evaluation rows) into one row per sample, stored as sorted, bucketed
  Parquet under ``sample_lineage/``; :func:`~.build.build_lineage_from_store` finds
  those rows in the store first.
- :mod:`.read`: :func:`~.read.lookup` returns a sample's chain from source file to
  evaluation rows; :func:`~.read.query` lists samples matching a filter such as
  ``source = 'GoPro' and status = 'dropped'``.
- :mod:`.where`: that filter language (small and safe).
- :mod:`.details`: a looked-up chain completed from the stages' own rows.

See docs/LINEAGE.md for the schema, the layout and the measured performance.
"""
