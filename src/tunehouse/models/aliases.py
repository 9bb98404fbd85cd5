"""Model aliases: names such as `gpt-3.5-turbo` or `davinci` that stand for a model served here.

Code written for OpenAI names OpenAI's models; an alias lets it run unchanged. Three sources, the
first that knows a name wins: the store (`tunehouse models alias`, migrations), the server's
`TUNEHOUSE_MODEL_ALIASES`, and the shipped defaults, which map OpenAI's chat and legacy model names
to the shipped base model. This module only stores and looks up names; `catalog` checks targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select

from tunehouse.config import settings
from tunehouse.errors import InvalidValue
from tunehouse.models.shipped import SHIPPED_MODEL_ID
from tunehouse.store.db import session
from tunehouse.store.schema import AliasRow

OPENAI_CHAT_MODELS = (
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-3.5-turbo-1106",
    "gpt-3.5-turbo-0613",
    "gpt-3.5-turbo-16k",
    "gpt-4",
    "gpt-4-0613",
    "gpt-4-turbo",
    "gpt-4o",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "gpt-4.1",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini",
    "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano",
    "gpt-4.1-nano-2025-04-14",
)
OPENAI_LEGACY_MODELS = (
    "davinci",
    "curie",
    "babbage",
    "ada",
    "davinci-002",
    "babbage-002",
    "text-davinci-003",
    "text-davinci-002",
    "text-curie-001",
    "text-babbage-001",
    "text-ada-001",
    "gpt-3.5-turbo-instruct",
)
SHIPPED_ALIASES = dict.fromkeys(OPENAI_CHAT_MODELS + OPENAI_LEGACY_MODELS, SHIPPED_MODEL_ID)


@dataclass(frozen=True)
class Alias:
    name: str
    target: str
    source: str  # store: user | migration; or settings | shipped
    created: int = 0


def _from_settings() -> dict[str, str]:
    aliases = {}
    for entry in settings().model_aliases:
        name, sep, target = entry.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise InvalidValue(f"TUNEHOUSE_MODEL_ALIASES: '{entry}' is not NAME=TARGET.", param="model")
        aliases[name.strip()] = target.strip()
    return aliases


def list_aliases() -> list[Alias]:
    """Every alias in force, by name; a name defined in several places is listed once, as it resolves."""
    found = {name: Alias(name, target, "shipped") for name, target in SHIPPED_ALIASES.items()}
    found |= {name: Alias(name, target, "settings") for name, target in _from_settings().items()}
    with session() as s:
        for row in s.scalars(select(AliasRow)):
            found[row.name] = Alias(row.name, row.target, row.source, row.created)
    return sorted(found.values(), key=lambda alias: alias.name)


def find_alias(name: str) -> Alias | None:
    """The alias called `name`, or None."""
    with session() as s:
        row = s.get(AliasRow, name)
        if row is not None:
            return Alias(row.name, row.target, row.source, row.created)
    configured = _from_settings()
    if name in configured:
        return Alias(name, configured[name], "settings")
    if name in SHIPPED_ALIASES:
        return Alias(name, SHIPPED_ALIASES[name], "shipped")
    return None


def store_alias(name: str, target: str, source: str = "user") -> Alias:
    """Record `name` → `target` in the store, replacing an alias of that name (the caller checks the target)."""
    created = int(time.time())
    with session() as s:
        s.merge(AliasRow(name=name, target=target, created=created, source=source))
    return Alias(name, target, source, created)


def drop_alias(name: str) -> bool:
    """Remove a stored alias; False when the store had none of that name."""
    with session() as s:
        row = s.get(AliasRow, name)
        if row is None:
            return False
        s.delete(row)
        return True
