"""Scoring the validation set as a classifier at the end of every epoch (`compute_classification_metrics`).

Each validation example is a prompt (the legacy prompt with its separator, or a conversation up to its
final assistant turn) and a label (the completion, or that turn's reply), one of the job's classes.
The score of a class is the probability the model gives the class label's tokens right after the
prompt; scores are normalised over the classes. Where every label is one token (what OpenAI's guide
asked for, and what its legacy API scored: the first token) that is one next-token distribution per
example. Where a label is longer, its whole token sequence is scored (the product of its tokens'
probabilities, each given the prompt and the label's tokens before it), so labels that share a first
token stay apart; the job is warned, since OpenAI's numbers for such labels came from the first token
alone. The trainer reports the probabilities; `eval/classification.py` turns them into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tunehouse.errors import DataValidationError
from tunehouse.models.template import (
    IGNORE_INDEX,
    EncodedExample,
    encode_chat_example,
    encode_completion_example,
    message_text,
)
from tunehouse.train.distributed import SingleProcess
from tunehouse.train.reporting import Reporter

SCORES_KEY = "classification_scores"
"""The key of an epoch's metrics under which the trainer reports the validation set's class scores:
`{"labels": [true class index per example], "probabilities": [[p per class] per example]}`."""


def _final_reply(messages: list[dict[str, Any]]) -> int:
    """The index of a conversation's last assistant message: the one a chat classifier answers with."""
    return max(i for i, message in enumerate(messages) if message.get("role") == "assistant")


def label_of(example: dict[str, Any]) -> str:
    """A classification example's label: its completion, or its final assistant reply's text.

    >>> label_of({"prompt": "Great film\\n\\n###\\n\\n", "completion": " positive"})
    ' positive'
    >>> label_of({"messages": [{"role": "user", "content": "Great film"}, {"role": "assistant", "content": "positive"}]})
    'positive'
    """
    if "messages" in example:
        messages = example["messages"]
        return message_text(messages[_final_reply(messages)].get("content"))
    return str(example["completion"])


def prompt_ids(tokenizer: Any, example: dict[str, Any]) -> list[int]:
    """The tokens before a classification example's label, exactly as training encodes them.

    The example is encoded as for training with its final turn trained; the tokens before that turn's
    trained span (the reply and its end marker, or the completion and EOS) are the prompt.
    """
    if "messages" in example:
        messages = example["messages"]
        last = _final_reply(messages)
        encoded = encode_chat_example(tokenizer, [*messages[:last], {**messages[last], "weight": 1}])
    else:
        encoded = encode_completion_example(tokenizer, example["prompt"], example["completion"])
    start = len(encoded.labels)
    while start > 0 and encoded.labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return encoded.input_ids[:start]


class ScoringTrainer(Protocol):
    """What scoring needs of the trainer (`recipe.Trainer`): its forward pass, over its processes."""

    @property
    def forward(self) -> Any: ...

    @property
    def decoder(self) -> Any: ...

    @property
    def head_weight(self) -> torch.Tensor | None: ...

    @property
    def processes(self) -> SingleProcess: ...

    def forward_pass(self, model: Any, examples: list[EncodedExample], packed: bool) -> Any: ...

    def process_passes(self, indices: list[int], lengths: list[int]) -> list[tuple[list[int], bool]]: ...


@dataclass(frozen=True)
class _Query:
    """One sequence to score: a prompt followed by a class label, the label's tokens labelled."""

    example: int
    label_class: int
    """The class whose label follows the prompt (single-token scoring reads every class from it)."""
    encoded: EncodedExample


class ValidationClassifier:
    """The validation set as a classification task over `classes`, scored by `score` (see the module)."""

    def __init__(
        self, tokenizer: Any, classes: list[str], examples: list[dict[str, Any]], max_length: int, reporter: Reporter
    ) -> None:
        self.classes = classes
        self.class_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in classes]
        empty = [label for label, ids in zip(classes, self.class_ids, strict=True) if not ids]
        if empty:
            raise DataValidationError(f"The class label {empty[0]!r} has no tokens to score.", param="validation_file")
        longer = [label for label, ids in zip(classes, self.class_ids, strict=True) if len(ids) > 1]
        first_tokens = {ids[0] for ids in self.class_ids}
        self.single_token = not longer and len(first_tokens) == len(classes)
        if longer:
            reporter.message(
                f"{len(longer)} of the {len(classes)} class labels are more than one token (e.g. {longer[0]!r}); "
                "each class is scored by the probability of its whole token sequence after the prompt, where "
                "OpenAI's legacy API scored the first token only. Labels of one token each (a leading space and "
                "one word) score as it did.",
                level="warn",
            )
        room = max_length - max(len(ids) for ids in self.class_ids)
        self.labels: list[int] = []
        self.queries: list[_Query] = []
        for example in examples:
            prompt = prompt_ids(tokenizer, example)[-room:] if room > 0 else []
            if not prompt:  # nothing to predict the label from
                continue
            index = len(self.labels)
            self.labels.append(classes.index(label_of(example)))
            scored = range(1) if self.single_token else range(len(classes))
            for label_class in scored:
                ids = self.class_ids[label_class]
                encoded = EncodedExample(prompt + ids, [IGNORE_INDEX] * len(prompt) + ids)
                self.queries.append(_Query(index, label_class, encoded))

    def _log_probs(
        self, trainer: ScoringTrainer, queries: list[_Query]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One packed pass over `queries`: the log-softmax over the vocabulary at each position that
        predicts a label token, which query the position belongs to, and the label token."""
        result = trainer.forward_pass(trainer.forward, [q.encoded for q in queries], packed=True)
        targets = result.labels[:, 1:]
        mask = targets != IGNORE_INDEX
        if trainer.decoder is not None and trainer.head_weight is not None:  # the forward stops at the decoder
            hidden = result.output.last_hidden_state[:, :-1][mask].float()
            logits = hidden @ trainer.head_weight.float().t()
        else:
            logits = result.output.logits[:, :-1][mask].float()
        return torch.log_softmax(logits, dim=-1), result.segment_ids[:, 1:][mask], targets[mask]

    @torch.no_grad()
    def score(self, trainer: ScoringTrainer) -> dict[str, Any]:
        """Every example's true class and class probabilities under the model as it is now, each
        process scoring its share of the examples."""
        trainer.forward.eval()
        n_classes = len(self.classes)
        log_probs = torch.zeros(len(self.labels), n_classes, dtype=torch.float64)
        lengths = [len(q.encoded.input_ids) for q in self.queries]
        for one_pass, counts in trainer.process_passes(list(range(len(self.queries))), lengths):
            queries = [self.queries[i] for i in one_pass]
            token_log_probs, owners, targets = self._log_probs(trainer, queries)
            if not counts:  # a filler pass that keeps the processes in step
                continue
            owners, token_log_probs = owners.cpu(), token_log_probs.cpu().double()
            if self.single_token:  # every class's one token, from the position after the prompt
                first = torch.tensor([ids[0] for ids in self.class_ids])
                rows = torch.tensor([queries[o].example for o in owners.tolist()])
                log_probs[rows] = token_log_probs[:, first]
            else:
                picked = token_log_probs.gather(1, targets.cpu()[:, None]).squeeze(1)
                for owner, value in zip(owners.tolist(), picked.tolist(), strict=True):
                    query = queries[owner]
                    log_probs[query.example, query.label_class] += value
        if trainer.processes.world_size > 1:
            log_probs = torch.tensor(trainer.processes.sum(log_probs.flatten().tolist())).view(-1, n_classes)
        return {"labels": list(self.labels), "probabilities": torch.softmax(log_probs, dim=-1).tolist()}
