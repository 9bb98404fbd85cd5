"""The base of every JSON request body: fields OpenAI's API has and tunehouse does not use are
ignored (except by the completion requests, which refuse what they do not honour: `api/sampling.py`),
and an explicit JSON `null` means the field's default, as OpenAI reads it (the 0.28 CLI sends
`"n": null`, `"logprobs": null`… for every option it was not given)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data
