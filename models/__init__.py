"""Torch side of cotir-pipeline: CoT adapter, FLUX backbone wrappers, training, sampling.

Importing this package has no side effects and does not import torch; each
submodule imports what it needs.
"""
