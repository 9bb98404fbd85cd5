"""Migration from any server that speaks OpenAI's fine-tuning API (OpenAI itself, another tunehouse).

Above `jobs` (it re-creates jobs here) and `eval` (it compares the source's answers with the new
model's); the CLI's `tunehouse migrate` calls it.
"""

GOLDEN_SIZE = 20
"""Prompts per job whose answers are compared, unless `tunehouse migrate --golden` says otherwise."""
