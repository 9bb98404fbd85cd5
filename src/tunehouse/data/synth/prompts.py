"""The prompts a synthesis run sends: one template per task, few-shot, with defaults a small model follows.

Each task is a system message, worked examples (user turn and the reply we want) and the user turn
for the real input, written as `string.Template`s over the task's variables (`$passage`, `$n`,
`$question`, `$answer`). The defaults show a 135M model exactly the output shape the reply parser
reads (numbered lines, one sentence, a bare number). `--prompt-file` takes a TOML file shaped like
`tunehouse data synth --print-prompts`; a task or field it leaves out keeps its default.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from string import Template
from typing import Any

from tunehouse.errors import InvalidRequest

VARIABLES = {
    "questions": ({"passage", "n"}, {"passage"}),  # (allowed, required)
    "answer": ({"passage", "question"}, {"passage", "question"}),
    "paraphrase": ({"question", "answer", "n"}, {"question"}),
    "rewrite": ({"passage"}, {"passage"}),
    "judge": ({"passage", "question", "answer"}, {"question", "answer"}),
}
FIELDS = ("system", "user", "examples")
# A reply's token budget per task: (base, per item asked for). Enough for what the task asks, so a
# small model that rambles on stops early instead of costing minutes per reply on a CPU.
REPLY_TOKENS = {"questions": (24, 32), "answer": (96, 0), "paraphrase": (24, 32), "rewrite": (64, 0), "judge": (8, 0)}

_CURIE = (
    "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics. "
    "She won the Nobel Prize in Physics in 1903 and the Nobel Prize in Chemistry in 1911."
)
_EIFFEL = (
    "The Eiffel Tower was built for the 1889 World's Fair in Paris. It was designed by the engineering "
    "company of Gustave Eiffel and is 330 metres tall."
)


@dataclass(frozen=True)
class Prompt:
    """One task's messages: a system turn, worked examples, and the user turn for the real input."""

    task: str
    system: str
    user: str
    examples: tuple[dict[str, str], ...] = ()  # each: the task's variables and the `reply` wanted

    def messages(self, **variables: Any) -> list[dict[str, str]]:
        """The chat messages for one request.

        >>> Prompt("rewrite", "Rewrite.", "Text: $passage").messages(passage="Hi.")
        [{'role': 'system', 'content': 'Rewrite.'}, {'role': 'user', 'content': 'Text: Hi.'}]
        """
        messages = [{"role": "system", "content": Template(self.system).safe_substitute(variables)}]
        for example in self.examples:
            messages.append({"role": "user", "content": Template(self.user).substitute(example)})
            messages.append({"role": "assistant", "content": example["reply"]})
        messages.append({"role": "user", "content": Template(self.user).substitute(variables)})
        return messages


@dataclass(frozen=True)
class PromptSet:
    questions: Prompt
    answer: Prompt
    paraphrase: Prompt
    rewrite: Prompt
    judge: Prompt

    def to_dict(self) -> dict[str, Any]:
        """What identifies these prompts in the cache key and the report."""
        return {
            task: {"system": p.system, "user": p.user, "examples": list(p.examples)}
            for task, p in ((t, getattr(self, t)) for t in VARIABLES)
        }


DEFAULT_PROMPTS = PromptSet(
    questions=Prompt(
        "questions",
        "You write quiz questions about a passage. Each question must be answerable from the passage alone "
        "and must name its subject in full (never just he, she or it). Write one question per line, numbered.",
        "Passage:\n$passage\n\nWrite $n questions about this passage.",
        (
            {
                "passage": _CURIE,
                "n": "3",
                "reply": "1. Where was Marie Curie born?\n2. In what year did Marie Curie win the Nobel Prize in "
                "Physics?\n3. Why did Marie Curie move to Paris?",
            },
            {
                "passage": _EIFFEL,
                "n": "2",
                "reply": "1. For which event was the Eiffel Tower built?\n2. How tall is the Eiffel Tower?",
            },
        ),
    ),
    answer=Prompt(
        "answer",
        "You answer a question about a passage by copying the one sentence of the passage that answers it, "
        "word for word.",
        "Passage:\n$passage\n\nQuestion: $question",
        (
            {
                "passage": _CURIE,
                "question": "When did Marie Curie move to Paris?",
                "reply": "She moved to Paris in 1891 to study physics.",
            },
            {
                "passage": _EIFFEL,
                "question": "How tall is the Eiffel Tower?",
                "reply": "It was designed by the engineering company of Gustave Eiffel and is 330 metres tall.",
            },
        ),
    ),
    paraphrase=Prompt(
        "paraphrase",
        "You rewrite a question in other words. Every rewrite asks for exactly the same information, keeps "
        "every name, and uses different wording. Write one rewrite per line, numbered.",
        "Question: $question\nAnswer: $answer\n\nWrite $n other ways to ask this question.",
        (
            {
                "question": "Where was Marie Curie born?",
                "answer": "Marie Curie was born in Warsaw.",
                "n": "3",
                "reply": "1. What is Marie Curie's birthplace?\n2. In which city was Marie Curie born?\n"
                "3. Marie Curie was born in what place?",
            },
        ),
    ),
    rewrite=Prompt(
        "rewrite",
        "You rewrite a passage in different words. Keep every fact, name, number and date; change the "
        "wording and the order of the sentences.",
        "Passage:\n$passage\n\nRewrite this passage in different words.",
        (
            {
                "passage": _EIFFEL,
                "reply": "Standing 330 metres tall, the Eiffel Tower in Paris was designed by Gustave Eiffel's "
                "engineering company and built for the World's Fair of 1889.",
            },
        ),
    ),
    judge=Prompt(
        "judge",
        "You rate a question and its answer about a passage from 1 to 10: 10 when the question is clear and "
        "the answer is correct and stated in the passage, 1 when the answer is wrong or not in the passage. "
        "Reply with the number only.",
        "Passage:\n$passage\n\nQuestion: $question\nAnswer: $answer\n\nRating:",
        (
            {
                "passage": _CURIE,
                "question": "Where was Marie Curie born?",
                "answer": "Marie Curie was born in Warsaw.",
                "reply": "10",
            },
            {
                "passage": _CURIE,
                "question": "When did Marie Curie die?",
                "answer": "Marie Curie died in 1891.",
                "reply": "1",
            },
        ),
    ),
)


def _check(prompt: Prompt, where: str) -> Prompt:
    allowed, required = VARIABLES[prompt.task]
    used = set(Template(prompt.user).get_identifiers())
    if not Template(prompt.user).is_valid():
        raise InvalidRequest(f"{where}.user is not a valid template (write a literal $ as $$).", param="prompt_file")
    if unknown := used - allowed:
        raise InvalidRequest(
            f"{where}.user uses ${', $'.join(sorted(unknown))}; {prompt.task} prompts know "
            f"${', $'.join(sorted(allowed))}.",
            param="prompt_file",
        )
    if missing := required - used:
        raise InvalidRequest(f"{where}.user must use ${', $'.join(sorted(missing))}.", param="prompt_file")
    for index, example in enumerate(prompt.examples):
        lacking = (used | {"reply"}) - set(example)
        if lacking or not all(isinstance(v, str | int) for v in example.values()):
            raise InvalidRequest(
                f"{where}.examples[{index}] needs string values for {', '.join(sorted(used | {'reply'}))}.",
                param="prompt_file",
            )
    return prompt


def load_prompts(path: Path | None) -> PromptSet:
    """The default prompts, with the tasks and fields a TOML prompt file gives replaced."""
    if path is None:
        return DEFAULT_PROMPTS
    try:
        given = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidRequest(f"No such prompt file: {path}", param="prompt_file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path} is not a TOML file: {exc}", param="prompt_file") from exc
    prompts = DEFAULT_PROMPTS
    for task, fields in given.items():
        if task not in VARIABLES or not isinstance(fields, dict):
            raise InvalidRequest(
                f"{path}: unknown prompt [{task}]; the tasks are {', '.join(VARIABLES)}.", param="prompt_file"
            )
        if unknown := set(fields) - set(FIELDS):
            raise InvalidRequest(
                f"{path}: [{task}] has unknown keys {sorted(unknown)}; use {', '.join(FIELDS)}.", param="prompt_file"
            )
        changes = {k: v for k, v in fields.items() if k != "examples"}
        if not all(isinstance(v, str) for v in changes.values()):
            raise InvalidRequest(f"{path}: [{task}] system and user must be strings.", param="prompt_file")
        if "examples" in fields:
            examples = fields["examples"]
            if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
                raise InvalidRequest(
                    f"{path}: [{task}].examples must be [[{task}.examples]] tables.", param="prompt_file"
                )
            changes["examples"] = tuple({k: str(v) for k, v in e.items()} for e in examples)
        updated = _check(replace(getattr(prompts, task), **changes), f"{path}: [{task}]")
        prompts = replace(prompts, **{task: updated})
    return prompts


def _toml_string(value: str) -> str:
    """A TOML string: a readable multi-line literal where possible."""
    if "'''" not in value and "\r" not in value:
        return f"'''\n{value}'''" if "\n" in value else f"'{value}'" if "'" not in value else f"'''{value}'''"
    return json.dumps(value, ensure_ascii=False)


def prompts_toml(prompts: PromptSet = DEFAULT_PROMPTS) -> str:
    """The prompts as a TOML prompt file, to copy and edit."""
    lines = [
        "# tunehouse data synth / augment prompts. Edit, then pass with --prompt-file FILE.",
        "# Variables: $passage, $n, $question, $answer (write a literal dollar sign as $$).",
    ]
    for task, prompt in prompts.to_dict().items():
        lines += [
            "",
            f"[{task}]",
            f"system = {_toml_string(prompt['system'])}",
            f"user = {_toml_string(prompt['user'])}",
        ]
        for example in prompt["examples"]:
            lines += ["", f"[[{task}.examples]]"]
            lines += [f"{key} = {_toml_string(str(value))}" for key, value in example.items()]
    return "\n".join(lines) + "\n"


def reply_tokens(task: str, n: int = 1, passage_tokens: int = 0) -> int:
    """The most tokens a reply to `task` needs: a rewrite about twice its passage, a list 32 per item.

    >>> reply_tokens("questions", n=3), reply_tokens("rewrite", passage_tokens=100)
    (120, 264)
    """
    base, per_item = REPLY_TOKENS[task]
    return base + per_item * n + (2 * passage_tokens if task == "rewrite" else 0)
