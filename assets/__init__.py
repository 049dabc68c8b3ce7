"""The Dagster code location of cotir-pipeline (loaded from ``assets/definitions.py``).

Each module holds one stage's assets as thin functions over the domain library.
"""
