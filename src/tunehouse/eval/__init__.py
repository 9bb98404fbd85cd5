"""Evaluation: classification metrics, graders, the Evals API's runs, base vs fine-tuned.

Sits above `data`, `train` and `serve` (it generates through `serve`) and below `jobs` (the worker
runs eval runs and scores classification jobs through it).
"""
