"""The `vllm` format: the adapter folder and the exact `vllm serve` line that serves it.

vLLM serves a LoRA under a name of its own (`--lora-modules NAME=PATH`); the name is the tunehouse
model id, so code that called the fine-tune here calls it there unchanged. `--max-lora-rank` must
be one of the ranks vLLM accepts, at least the adapter's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's MaxLoRARanks


def max_lora_rank(rank: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds `rank`."""
    return next((r for r in VLLM_LORA_RANKS if r >= rank), rank)


def serve_command(base: str, lora_module: str, rank: int) -> str:
    """`vllm serve BASE --enable-lora --lora-modules NAME=PATH --max-lora-rank R`; `lora_module` is
    the `NAME=PATH` word already quoted for the shell."""
    return f"vllm serve {shlex.quote(base)} --enable-lora --lora-modules {lora_module} --max-lora-rank {max_lora_rank(rank)}"


def write_serving_files(out_dir: Path, final_dir: Path, base: str, name: str, rank: int) -> tuple[list[Path], str]:
    """`serve.sh` (runs from anywhere) and `README.md` into `out_dir`, which will be moved to `final_dir`;
    returns them and the command for `final_dir`."""
    adapter = final_dir / "adapter"
    command = serve_command(base, shlex.quote(f"{name}={adapter}"), rank)
    portable = serve_command(base, shlex.quote(f"{name}=") + '"$here/adapter"', rank)
    script = out_dir / "serve.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"# Serve {name} with vLLM: its LoRA adapter over {base}, under the same model name.\n"
        'here="$(cd "$(dirname "$0")" && pwd)"\n'
        f'exec {portable} "$@"\n'
    )
    script.chmod(0o755)
    readme = out_dir / "README.md"
    readme.write_text(
        f"# {name} for vLLM\n\n"
        f"`adapter/` is a PEFT LoRA adapter (lora_A/lora_B only) over `{base}`. Serve it with\n\n"
        f"```sh\n{command}\n```\n\n"
        "or `./serve.sh` from any directory, then call the model by its name through any OpenAI client:\n\n"
        f'```python\nclient.chat.completions.create(model="{name}", messages=[...])\n```\n'
    )
    return [script, readme], command
