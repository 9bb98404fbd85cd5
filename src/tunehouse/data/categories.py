"""Every problem category the validator reports: its stable id, severity and default one-line fix.

Ids are part of the interface (the CLI's `--json`, the server's job errors, tests), so they never
change meaning. Where OpenAI's cookbook (`Chat_finetuning_data_prep.ipynb`) or the legacy
`prepare_data` validators name a check, we use their name.
"""

from __future__ import annotations

ERROR = "error"
WARNING = "warning"

CATEGORIES: dict[str, tuple[str, str]] = {
    # The file as a whole.
    "empty_file": (ERROR, "Write one JSON object per line; the file has no examples."),
    "not_jsonl": (ERROR, "Write one JSON object per line: `tunehouse data convert FILE -o out.jsonl`."),
    "binary_file": (ERROR, "Upload a UTF-8 JSONL text file; convert other formats with `tunehouse data convert`."),
    "encoding": (ERROR, "Save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in.jsonl > out.jsonl`)."),
    "byte_order_mark": (WARNING, "Save as UTF-8 without a BOM; tunehouse skips it, other tools may not."),
    "crlf_line_endings": (WARNING, "Windows line endings are accepted; `dos2unix FILE` makes the file portable."),
    "blank_line": (WARNING, "Remove the blank line; blank lines are skipped."),
    "line_too_long": (ERROR, "Shorten or split the example; no model context fits a line this long."),
    "unknown_format": (
        ERROR,
        "Each line needs `messages` (chat), `prompt`+`completion` (legacy) or `input`+`preferred_output`"
        "+`non_preferred_output` (preference).",
    ),
    "format_mismatch": (ERROR, "Use one format for every line of a file."),
    "too_few_examples": (ERROR, "Provide at least 10 valid examples (50 to 100 is a good start)."),
    "duplicate_example": (WARNING, "Remove the duplicate; repeated examples are over-weighted in training."),
    # One line.
    "invalid_json": (ERROR, "Make the line a single valid JSON object."),
    "data_type": (ERROR, "Each line (and each message) must be a JSON object."),
    "unrecognized_key": (WARNING, "Remove the key; it is ignored in training."),
    # Chat.
    "missing_messages_list": (ERROR, 'Give the line a non-empty list: {"messages": [{"role": ..., "content": ...}]}.'),
    "message_missing_key": (ERROR, "Give every message a `role` and a `content`."),
    "message_unrecognized_key": (
        ERROR,
        "Keep only role, content, name, weight, tool_calls, tool_call_id and function_call in a message.",
    ),
    "unrecognized_role": (ERROR, "Use one of the roles system, developer, user, assistant, tool."),
    "missing_content": (ERROR, "Give the message non-empty text content (a string or a list of text parts)."),
    "example_missing_assistant_message": (ERROR, "Add at least one assistant message: it is what the model learns."),
    "example_starts_with_assistant": (ERROR, "Put a user (or system) message before the first assistant message."),
    "unsupported_content_part": (WARNING, "Only text parts are trained on by text-only models; remove image parts."),
    "invalid_weight": (ERROR, "Set `weight` to 0 or 1, and only on assistant messages."),
    "invalid_tool_calls": (
        ERROR,
        'Write tool_calls as [{"id": ..., "type": "function", "function": {"name": ..., "arguments": "<json>"}}].',
    ),
    "invalid_tool_message": (ERROR, "Give each tool message the `tool_call_id` of the assistant call it answers."),
    "unmatched_tool_call_id": (WARNING, "Answer only tool calls made by an earlier assistant message."),
    "invalid_tools": (
        ERROR,
        'Write tools as [{"type": "function", "function": {"name": ...}}] and parallel_tool_calls as a boolean.',
    ),
    "no_trained_tokens": (WARNING, "Give at least one assistant message weight 1, or drop the example."),
    # Preference (DPO).
    "preference_missing_key": (
        ERROR,
        "Give the line `input` (with messages), `preferred_output` and `non_preferred_output`.",
    ),
    "invalid_preference_output": (
        ERROR,
        'Write each output as a list of exactly one message: [{"role": "assistant", "content": ...}].',
    ),
    "identical_preference_outputs": (WARNING, "Make the preferred and non-preferred outputs differ."),
    # Legacy prompt/completion.
    "missing_prompt": (ERROR, 'Give the line a string "prompt" (it may be empty).'),
    "missing_completion": (ERROR, 'Give the line a non-empty string "completion".'),
    "all_prompts_identical": (ERROR, "Give each example its own prompt; identical prompts teach nothing."),
    "missing_separator": (WARNING, "End every prompt with the same separator, e.g. `\\n\\n###\\n\\n`."),
    "separator_in_prompt": (WARNING, "Use a separator that appears only at the end of the prompt."),
    "completion_missing_leading_whitespace": (WARNING, "Start every completion with a space."),
    "all_completions_identical": (ERROR, "Give each example its own completion; identical completions teach nothing."),
    "missing_stop_sequence": (WARNING, "End every completion with the same stop sequence, e.g. `\\n` or ` END`."),
    "long_example": (WARNING, "Shorten the example or drop it; it will be truncated in training."),
    "looks_like_classification": (
        WARNING,
        "For classification keep completions to one short label each and hold out a validation set.",
    ),
    # Token counting (stats).
    "template_error": (ERROR, "Reorder the messages so the model's chat template can render them."),
    "over_context_length": (WARNING, "Shorten the example; tokens past the context length are cut off."),
}
