"""Benchmark: validate + token-count a 1 GB chat JSONL, tunehouse vs the cookbook-style approach.

    .venv/bin/python bench/data_bench.py              # 1 GB file, peer timed on a 50 MB prefix
    .venv/bin/python bench/data_bench.py --size-mb 100 --peer-mb 20   # a quick run

The file is generated into a temporary folder (deleted afterwards): chat examples of 1-3 turns,
half with a system message, whose text is drawn from a Zipfian vocabulary of up to 30,000 English
words (the tokenizer's own whole-word tokens, a quarter lengthened by a subword) with punctuation,
numbers and capitals, so word frequencies and tokens per byte resemble natural English text.

- **tunehouse**: `compute_stats` — every validation check plus exact token counts with the shipped
  model's tokenizer and chat template (as the trainer encodes), one process per core.
- **peer**: the OpenAI cookbook's `Chat_finetuning_data_prep` loop: `json.loads` per line, its
  format checks, and `tokenizer.encode` per message value (its `num_tokens_from_messages` and
  `num_assistant_tokens_from_messages`), on the same tokenizer. Timed on a prefix, reported in MB/s.

Each side runs in its own subprocess. Peak memory is reported two ways: `ru_maxrss` of the largest
process (`RUSAGE_CHILDREN`) and, with psutil, the peak summed RSS of the whole process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import orjson

VOCAB_WORDS = 30_000


def _vocabulary(rng: np.random.Generator, tokenizer_dir: Path) -> np.ndarray:
    """English-like words: the tokenizer's whole-word tokens in merge order (its frequency order),
    a quarter of them extended by a subword so they take several tokens, plus capitals,
    punctuation and numbers."""
    vocab = orjson.loads((tokenizer_dir / "tokenizer.json").read_bytes())["model"]["vocab"]
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    whole = [t[1:] for t, _ in by_id if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and len(t) > 2]
    tails = [t for t, _ in by_id if t.isascii() and t.isalpha() and t.islower() and len(t) >= 2]
    words = whole[:VOCAB_WORDS]
    for i in range(2, len(words), 4):
        words[i] += tails[int(rng.integers(0, len(tails)))]
    for i in range(0, len(words), 7):
        words[i] = words[i].capitalize()
    for i in range(3, len(words), 11):
        words[i] += rng.choice([",", ".", "?", "!", ":", ";"])
    for i in range(5, len(words), 97):
        words[i] = str(int(rng.integers(0, 100_000)))
    return np.array(words, dtype=object)


def generate(path: Path, size_bytes: int, tokenizer_dir: Path, seed: int = 0) -> int:
    """Write chat JSONL until `size_bytes`; returns the number of examples."""
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, tokenizer_dir)
    ranks = np.arange(1, len(vocab) + 1)
    zipf = 1 / ranks**1.07
    zipf /= zipf.sum()
    written = examples = 0
    with path.open("wb") as fh:
        while written < size_bytes:
            words = vocab[rng.choice(len(vocab), size=400_000, p=zipf)]
            cursor = 0
            lines = []
            while cursor < len(words) - 2000:
                messages = []
                if rng.random() < 0.5:
                    messages.append({"role": "system", "content": " ".join(words[cursor : cursor + 15])})
                    cursor += 15
                for _ in range(int(rng.integers(1, 4))):
                    n_user, n_assistant = int(rng.integers(10, 120)), int(rng.integers(30, 300))
                    messages.append({"role": "user", "content": " ".join(words[cursor : cursor + n_user])})
                    cursor += n_user
                    reply = " ".join(words[cursor : cursor + n_assistant])
                    messages.append({"role": "assistant", "content": reply})
                    cursor += n_assistant
                lines.append(orjson.dumps({"messages": messages}))
            chunk = b"\n".join(lines) + b"\n"
            fh.write(chunk)
            written += len(chunk)
            examples += len(lines)
    return examples


def run_ours(path: Path, tokenizer_dir: Path) -> dict:
    from transformers import AutoTokenizer

    from tunehouse.data.stats import compute_stats
    from tunehouse.train.hyperparams import auto_n_epochs

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    started = time.perf_counter()
    stats = compute_stats(path, "bench", tokenizer=tokenizer, max_length=2048, epochs_for=auto_n_epochs)
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "bytes": path.stat().st_size,
        "examples": stats.n_examples,
        "tokens": stats.total_tokens,
        "valid": stats.validation.ok,
        "counting": stats.counting,
    }


def _cookbook_checks(ex: dict, errors: dict) -> None:
    """The format checks of `Chat_finetuning_data_prep.ipynb`, as written there."""
    if not isinstance(ex, dict):
        errors["data_type"] = errors.get("data_type", 0) + 1
        return
    messages = ex.get("messages")
    if not messages:
        errors["missing_messages_list"] = errors.get("missing_messages_list", 0) + 1
        return
    for message in messages:
        if "role" not in message or "content" not in message:
            errors["message_missing_key"] = errors.get("message_missing_key", 0) + 1
        if any(k not in ("role", "content", "name", "function_call", "weight") for k in message):
            errors["message_unrecognized_key"] = errors.get("message_unrecognized_key", 0) + 1
        if message.get("role", None) not in ("system", "user", "assistant", "function"):
            errors["unrecognized_role"] = errors.get("unrecognized_role", 0) + 1
        content = message.get("content", None)
        function_call = message.get("function_call", None)
        if (not content and not function_call) or not isinstance(content, str):
            errors["missing_content"] = errors.get("missing_content", 0) + 1
    if not any(message.get("role", None) == "assistant" for message in messages):
        errors["example_missing_assistant_message"] = errors.get("example_missing_assistant_message", 0) + 1


def run_peer(path: Path, tokenizer_dir: Path, limit: int) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    started = time.perf_counter()
    errors: dict[str, int] = {}
    tokens = assistant_tokens = examples = consumed = 0
    with path.open("rb") as fh:
        for line in fh:
            consumed += len(line)
            if consumed > limit:
                consumed -= len(line)
                break
            ex = json.loads(line)
            _cookbook_checks(ex, errors)
            examples += 1
            n = 3
            for message in ex["messages"]:
                n += 3
                for value in message.values():
                    n += len(tokenizer.encode(value, add_special_tokens=False))
                if message["role"] == "assistant":
                    assistant_tokens += len(tokenizer.encode(message["content"], add_special_tokens=False))
            tokens += n
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "bytes": consumed, "examples": examples, "tokens": tokens, "errors": errors}


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        parent = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)])
    except psutil.Error:
        return 0


def measure(args: list[str]) -> dict:
    """Run a side in a subprocess; its JSON result plus wall time and peak memory."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    peak_tree = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak_tree
        while not stop.is_set():
            peak_tree = max(peak_tree, _tree_rss(child.pid))
            time.sleep(0.1)

    try:
        import psutil  # noqa: F401

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    except ImportError:
        sampler = None
    out, _ = child.communicate()
    stop.set()
    if sampler:
        sampler.join()
    if child.returncode:
        raise SystemExit(f"{args[1]} failed with exit code {child.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    result["ru_maxrss_mb"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024
    result["tree_peak_rss_mb"] = peak_tree / 2**20 if peak_tree else None
    result["mb_per_s"] = result["bytes"] / 1e6 / result["seconds"]
    return result


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return f"{os.cpu_count()} cores, {model}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--peer-mb", type=int, default=50)
    parser.add_argument("--side", nargs=3, metavar=("SIDE", "FILE", "TOKENIZER"), help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side, file, tokenizer_dir = args.side
        if side == "ours":
            result = run_ours(Path(file), Path(tokenizer_dir))
        else:
            result = run_peer(Path(file), Path(tokenizer_dir), args.limit)
        print(json.dumps(result))
        return

    from transformers import AutoTokenizer

    from tunehouse.models.shipped import shipped_gguf_path

    with tempfile.TemporaryDirectory(prefix="tunehouse-bench-") as tmp:
        folder = Path(tmp)
        gguf = shipped_gguf_path()
        AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(folder / "tok"))
        data = folder / "chat.jsonl"
        started = time.perf_counter()
        n = generate(data, args.size_mb * 10**6, folder / "tok")
        size = data.stat().st_size
        print(f"generated {size / 1e6:.0f} MB, {n} examples in {time.perf_counter() - started:.0f} s", flush=True)
        ours = measure(["--side", "ours", str(data), str(folder / "tok")])
        print("tunehouse:", json.dumps(ours), flush=True)
        peer = measure(["--side", "peer", str(data), str(folder / "tok"), "--limit", str(args.peer_mb * 10**6)])
        print("peer:", json.dumps(peer), flush=True)
    print(
        json.dumps(
            {
                "machine": _machine(),
                "load_average_1_5_15": os.getloadavg(),
                "file_mb": size / 1e6,
                "ours": ours,
                "peer": peer,
                "speedup": ours["mb_per_s"] / peer["mb_per_s"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
