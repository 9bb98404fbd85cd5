"""Llama-architecture GGUF files: a whole model, or a LoRA adapter for one, written with `gguf`.

Tensor names come from gguf's own name map (`model.layers.0.self_attn.q_proj.weight` →
`blk.0.attn_q.weight`), as llama.cpp's converter names them. The classic pitfall is rotary
embeddings: Hugging Face's Llama rotates the two halves of each head, llama.cpp rotates adjacent
pairs, so q and k rows are permuted per head on the way in (k with the key-value head count). A
LoRA's `B` matrix produces those rows, so it is permuted the same way and `A` is left alone.
Norms and other vectors stay f32; a matrix whose rows do not fill q8_0's 32-value blocks is f16.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from tunehouse.errors import ExportRefused
from tunehouse.models.export.adapter import AdapterWeights, module_of
from tunehouse.models.export.gguf_vocab import add_tokenizer

ARCH = "llama"


@dataclass(frozen=True)
class Quantization:
    name: str
    tensor_type: gguf.GGMLQuantizationType
    file_type: gguf.LlamaFileType


QUANTIZATIONS = {
    q.name: q
    for q in (
        Quantization("f16", gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        Quantization("bf16", gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
        Quantization("q8_0", gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    )
}


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters llama.cpp reads, from a Hugging Face Llama config."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden: int
    head_dim: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LlamaShape:
        heads = int(config["num_attention_heads"])
        return cls(
            n_layers=int(config["num_hidden_layers"]),
            n_heads=heads,
            n_kv_heads=int(config.get("num_key_value_heads") or heads),
            hidden=int(config["hidden_size"]),
            head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )


def rope_theta(config: Mapping[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(params.get("rope_theta") or config.get("rope_theta") or 10000.0)


def check_llama(config: Mapping[str, Any]) -> None:
    """Refuse what this writer does not translate: other architectures, rope scaling, biases."""
    if config.get("model_type") != "llama":
        raise ExportRefused(
            f"GGUF export writes Llama-architecture models; this one is '{config.get('model_type')}'. "
            "Export it with --format merged and convert that with llama.cpp's convert_hf_to_gguf.py.",
            param="format",
        )
    scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
    rope_type = scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ExportRefused(
            f"GGUF export does not translate '{rope_type}' rope scaling; export with --format merged.",
            param="format",
        )
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise ExportRefused(
            "GGUF export does not write Llama bias tensors; export with --format merged.", param="format"
        )


def unpermute_rows(weights: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder a q/k projection's output rows from Hugging Face's rotary layout to llama.cpp's."""
    rows = weights.shape[0]
    return weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _gguf_name(names: gguf.TensorNameMap, hf_name: str) -> str:
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ExportRefused(f"GGUF export has no llama.cpp name for the tensor '{hf_name}'.", param="format")
    return name


def _rope_heads(hf_name: str, shape: LlamaShape) -> int | None:
    """The head count to permute `hf_name`'s rows by, or None when it has no rotary rows."""
    if ".self_attn.q_proj." in hf_name + ".":
        return shape.n_heads
    if ".self_attn.k_proj." in hf_name + ".":
        return shape.n_kv_heads
    return None


def encode(name: str, data: np.ndarray, quantization: Quantization) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """`data` (f32) in the type llama.cpp expects for the tensor `name`."""
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    qtype = quantization.tensor_type
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:  # rows shorter than a quantization block
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).contiguous().numpy()


def model_tensors(state_dict: Mapping[str, torch.Tensor], shape: LlamaShape) -> Iterator[tuple[str, np.ndarray]]:
    """The model's tensors under their GGUF names, q/k rows permuted, f32."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.n_layers)
    for hf_name, tensor in state_dict.items():
        if hf_name == "lm_head.weight" and shape.tied_embeddings:
            continue  # llama.cpp reuses token_embd when there is no output tensor
        heads = _rope_heads(hf_name, shape)
        data = unpermute_rows(tensor, heads) if heads else tensor
        yield _gguf_name(names, hf_name), _numpy(data)


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_model_gguf(
    path: Path,
    *,
    name: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    tokenizer: Any,
    tokenizer_dir: Path,
    quantization: Quantization,
) -> Path:
    """A self-contained GGUF of the model: hyperparameters, tokenizer, chat template and weights."""
    check_llama(config)
    shape = LlamaShape.from_config(config)
    vocab_size = int(config["vocab_size"])
    writer = gguf.GGUFWriter(path, arch=ARCH)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_block_count(shape.n_layers)
    writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(shape.n_heads)
    writer.add_head_count_kv(shape.n_kv_heads)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    writer.add_rope_dimension_count(shape.head_dim)
    if shape.head_dim * shape.n_heads != shape.hidden:
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    writer.add_file_type(quantization.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, tokenizer_dir, vocab_size)
    for gguf_name, data in model_tensors(state_dict, shape):
        encoded, qtype = encode(gguf_name, data, quantization)
        writer.add_tensor(gguf_name, encoded, raw_dtype=qtype)
    _write(writer)
    return path


def lora_alpha(adapter: AdapterWeights) -> float:
    """The alpha llama.cpp needs to scale by `alpha / rank` as PEFT scaled the adapter."""
    config = adapter.config
    if config.get("alpha_pattern"):
        raise ExportRefused(
            "A GGUF LoRA holds one alpha; this adapter sets alpha per module (alpha_pattern). "
            "Export with --format merged or use the merged model.gguf.",
            param="format",
        )
    alpha = float(config.get("lora_alpha", 8))
    if config.get("use_rslora"):  # PEFT scales by alpha / sqrt(r), llama.cpp by alpha / r
        ranks = {t.shape[0] for n, t in adapter.lora.items() if ".lora_A." in n}
        if len(ranks) != 1:
            raise ExportRefused("A GGUF LoRA cannot hold an rsLoRA adapter with per-module ranks.", param="format")
        alpha *= math.sqrt(ranks.pop())
    return alpha


def lora_tensors(adapter: AdapterWeights, shape: LlamaShape) -> Iterator[tuple[str, np.ndarray]]:
    """`<gguf name>.lora_a` (r × in) and `.lora_b` (out × r) for each adapted module."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, shape.n_layers)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for peft_name, tensor in adapter.lora.items():
        part = "a" if ".lora_A." in peft_name else "b"
        pairs.setdefault(module_of(peft_name), {})[part] = tensor
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"a", "b"}:
            raise ExportRefused(f"The adapter's module {module} lacks its lora_A or lora_B matrix.", param="format")
        base = _gguf_name(names, module + ".weight")
        heads = _rope_heads(module, shape)
        yield base + ".lora_a", _numpy(pair["a"])
        yield base + ".lora_b", _numpy(unpermute_rows(pair["b"], heads) if heads else pair["b"])


def write_lora_gguf(
    path: Path, *, name: str, config: Mapping[str, Any], adapter: AdapterWeights, quantization: Quantization
) -> Path:
    """The adapter as a GGUF LoRA (`llama-cli -m base.gguf --lora adapter.gguf`)."""
    check_llama(config)
    shape = LlamaShape.from_config(config)
    alpha = lora_alpha(adapter)
    writer = gguf.GGUFWriter(path, arch=ARCH)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(quantization.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for gguf_name, data in lora_tensors(adapter, shape):
        encoded, qtype = encode(gguf_name, data, quantization)
        writer.add_tensor(gguf_name, encoded, raw_dtype=qtype)
    _write(writer)
    return path
