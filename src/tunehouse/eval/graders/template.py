"""Template strings: `{{item.x}}`, `{{item.a.b}}`, `{{item.rows[0]}}`, `{{sample.output_text}}`,
`{{sample.output_json.x}}`, `{{sample.output_tools[0].function.name}}`.

`check_template` refuses, when a grader is validated, a reference outside the `item` and `sample`
namespaces (or to a sample field that does not exist); `render` fills one in for an item, and a
reference the item or sample lacks is that item's `invalid_variable_error`, never a blank.
A value that is not a string is written as JSON.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunehouse.errors import InvalidRequest
from tunehouse.eval.graders.core import GradeFailed, Sample

REFERENCE = re.compile(r"\{\{\s*(.*?)\s*\}\}")
SEGMENT = re.compile(r"[^.\[\]]+|\[\d+\]")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")
NAMESPACES = ("item", "sample")


def _path(reference: str) -> list[str | int]:
    """`item.rows[0].name` → ["item", "rows", 0, "name"]; ValueError for a malformed path."""
    if not reference or reference.startswith(".") or ".." in reference or reference.endswith("."):
        raise ValueError(reference)
    segments = SEGMENT.findall(reference)
    if "".join(segments) != reference.replace(".", ""):
        raise ValueError(reference)
    return [int(s[1:-1]) if s.startswith("[") else s for s in segments]


def check_template(text: str, param: str, namespaces: tuple[str, ...] = NAMESPACES) -> None:
    """A 400 naming `param` for a malformed reference or one outside `namespaces`."""
    for reference in REFERENCE.findall(text):
        try:
            path = _path(reference)
        except ValueError:
            raise InvalidRequest(
                f"{param} has a malformed template reference {{{{{reference}}}}}.", param=param
            ) from None
        if path[0] not in namespaces:
            raise InvalidRequest(
                f"{param} refers to {{{{{reference}}}}}: templates may refer to "
                + " and ".join(f"{{{{{name}.…}}}}" for name in namespaces)
                + " only.",
                param=param,
            )
        if path[0] == "sample" and len(path) > 1 and path[1] not in SAMPLE_FIELDS:
            raise InvalidRequest(
                f"{param} refers to {{{{{reference}}}}}: a sample has {', '.join(SAMPLE_FIELDS)}.", param=param
            )


def lookup(reference: str, *, item: dict[str, Any], sample: Sample | None) -> Any:
    """The value `reference` names; GradeFailed (invalid_variable_error) when it is not there."""
    path = _path(reference)
    roots: dict[str, Any] = {"item": item}
    if sample is not None:
        roots["sample"] = sample.as_dict()
    value: Any = roots
    for depth, key in enumerate(path):
        found = isinstance(key, int) and isinstance(value, list) and -len(value) <= key < len(value)
        found = found or (isinstance(key, str) and isinstance(value, dict) and key in value)
        if not found:
            where = ".".join(str(k) for k in path[:depth]) or "the template"
            raise GradeFailed(
                f"{{{{{reference}}}}}: {where} has no {key!r}.", "invalid_variable_error", {"reference": reference}
            )
        value = value[key]
    return value


def render(text: str, *, item: dict[str, Any], sample: Sample | None) -> str:
    """`text` with every reference replaced by its value (non-strings as JSON)."""

    def fill(match: re.Match[str]) -> str:
        value = lookup(match.group(1), item=item, sample=sample)
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return REFERENCE.sub(fill, text)
