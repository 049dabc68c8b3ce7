"""Evaluation stage assets: bench sets, restorations and metric scores per method x bench, tables.

Assets (group ``evaluation``):
- ``bench_sets``: every bench set of the profile, in the public ``test.jsonl`` + ``lq/`` +
  ``hq/`` format, under ``bench_sets/<name>/`` in the store.
- ``restorations`` [method x bench]: a restorer's outputs under
  ``restorations/<method>/<bench>/{vague,precise}/`` with its runtime logs.
- ``metric_scores`` [method x bench]: one Parquet row per image and metric,
  ``metric_scores/<method>/<bench>.parquet`` (n/a rows carry their reason), and one
  row per sample and prompt for lineage, ``metric_scores/<method>/<bench>.samples.parquet``
  (sample id, method, checkpoint, prompt, output sha256, each metric).
- ``benchmark_tables``: the paper's Tables II-VI and VIII from every score row in the
  store, with the paper's reported rows beside ours, under ``benchmark_tables/``.

Methods are a dynamic partition dimension (``methods``): the built-ins ``identity`` and
``classical_chain``, ``cotir-<variant>-<recipe>-<run>-s<step>`` for each run's final
checkpoint found under ``checkpoints/`` (added by ``new_checkpoint_sensor``), and
``folder-<name>`` for configured folders of another method's outputs. The work is done by
the library (:mod:`cotir_pipeline.evaluation.stage`, ``.method_runs``, ``.reporting``);
this package wires it to Dagster and reports what it returns:

- ``resource``: the configuration resource and the partition keys;
- ``assets``: the four assets;
- ``metadata``: what they show in the UI;
- ``automation``: the jobs, the nightly schedule and the sensors.

See docs/EVALUATION.md.
"""
