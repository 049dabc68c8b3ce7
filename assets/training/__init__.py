"""Training stage assets: the base model, the CoTIR checkpoints (trained through Dagster
Pipes) and the Table VII ablation.

- :mod:`assets.training.resource`: ``TrainingResource`` (variant, launcher, recipe) and
  the trainer subprocess's environment;
- :mod:`assets.training.assets`: ``base_model``, ``cotir_checkpoint`` and the demo's
  ``cotir_checkpoint_lq_flow``;
- :mod:`assets.training.metadata`: what a checkpoint asset reports (metrics table, plots,
  finite-loss check);
- :mod:`assets.training.table_vii`: the ``table_vii`` asset and its resource.

The work without Dagster (the base model's check, run ids, what a run trained on) is in
:mod:`models.training_stage`.
"""
