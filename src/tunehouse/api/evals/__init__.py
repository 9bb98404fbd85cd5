"""/v1/evals endpoints: evals, their runs and the runs' output items."""
