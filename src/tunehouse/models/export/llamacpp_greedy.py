"""Greedy generation with llama.cpp, run by `verify.py` under the interpreter that has llama-cpp-python.

Standalone on purpose (no tunehouse imports): llama-cpp-python lives in its own virtual environment
(`make llamacpp`), kept out of tunehouse's. Reads a JSON request on stdin, writes JSON on stdout:
for each prompt, llama.cpp's own tokenization of its text, its best `top` (token, logit) pairs at
each prompt position, and the greedy continuation of the token ids tunehouse used (argmax of the
logits, as tunehouse's `temperature=0`), up to EOS or max_tokens.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import llama_cpp  # only in the llama.cpp venv (`make llamacpp`), not tunehouse's
import numpy as np


def best(logits: np.ndarray, k: int) -> list[list[float]]:
    order = np.argsort(-logits)[:k]
    return [[int(i), float(logits[i])] for i in order]


def generate(llm: Any, ids: list[int], max_tokens: int, eos: int | None, top: int) -> tuple[list[int], list[Any]]:
    llm.reset()
    llm.eval(ids)
    prompt_top = [best(llm.scores[i], top) for i in range(len(ids))]
    out: list[int] = []
    for _ in range(max_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token == eos:
            break
        llm.eval([token])
    return out, prompt_top


def main() -> None:
    request = json.load(sys.stdin)
    llm = llama_cpp.Llama(
        model_path=request["model"],
        lora_path=request.get("lora"),
        n_ctx=request.get("n_ctx", 512),
        n_threads=request.get("threads"),
        logits_all=True,  # llama-cpp-python keeps `scores` only then
        seed=0,
        verbose=False,
    )
    results = []
    for prompt in request["prompts"]:
        tokens = llm.tokenize(prompt["text"].encode("utf-8"), add_bos=False, special=True)
        generated, prompt_top = generate(llm, prompt["ids"], request["max_tokens"], request.get("eos"), request["top"])
        text = llm.detokenize(generated, special=False).decode("utf-8", errors="replace")
        results.append({"tokens": tokens, "generated": generated, "text": text, "prompt_top": prompt_top})
    json.dump({"chat_template": llm.metadata.get("tokenizer.chat_template"), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
