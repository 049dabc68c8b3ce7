"""Data stage assets: the source catalog, each source's raw pairs, and its pair shards.

- :mod:`assets.data_stage.resource`: ``DataStageResource`` (sizes, seeds, folders) and
  fetching a source's files with it;
- :mod:`assets.data_stage.assets`: ``source_catalog``, ``raw_pairs`` and ``pair_shards``,
  the latter two partitioned by source;
- :mod:`assets.data_stage.metadata`: what they show in the UI and their checks.

The work without Dagster is in :mod:`cotir_pipeline.pair_stage` and
:mod:`cotir_pipeline.shard_checks`.
"""
