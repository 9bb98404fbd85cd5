"""The dataset toolkit: validate, count tokens, convert, split and check training files.

One validator serves `tunehouse data validate`, this library and the server's `validating_files`
step, so a file the CLI accepts is a file a job accepts.
"""

from tunehouse.data.reader import iter_examples
from tunehouse.data.report import Problem, ValidationReport
from tunehouse.data.split import OverlapReport, overlap, split_file
from tunehouse.data.validate import validate_file

__all__ = [
    "OverlapReport",
    "Problem",
    "ValidationReport",
    "iter_examples",
    "overlap",
    "split_file",
    "validate_file",
]
