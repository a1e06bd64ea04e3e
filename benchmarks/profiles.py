"""The models a benchmark runs on: the tiny model (on CPU, or first on a GPU), and gpt2-medium in bf16 with
a GPU (the hub's weights when cached, otherwise a random-init model of the same shape)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from benchmarks.settings import TINY_512


@dataclass
class Profile:
    """A model to benchmark on: the tiny model on CPU, gpt2-medium (bf16) on a GPU."""

    name: str
    model: tuple[str, ...] = ()  # Hydra overrides selecting the model (and precision)
    batching_model: tuple[str, ...] = ()  # extra overrides for max_seq_len 512
    batch_size: int = 16
    bf16: bool = False
    dims: tuple[int, int] = (4, 128)  # layers, hidden size: the attention term of MFU
    speed_batch: int = 4  # speedups: micro-batch x accumulation = the effective batch (tiny: 16 sequences)
    speed_accum: int = 4
    only: tuple[str, ...] | None = None  # the sections this profile runs (None: all that apply)


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def profiles(args: argparse.Namespace, gpu: str | None) -> list[Profile]:
    """The profiles --profiles asks for (default: tiny; with a GPU also medium for one run's speed and small
    for cells per GPU; --gpu-plan: medium and small)."""
    default = ["medium", "small"] if args.gpu_plan else ["tiny", *(["medium", "small"] if gpu else [])]
    wanted = args.profiles.split(",") if args.profiles else default
    out = []
    if "tiny" in wanted:
        out.append(Profile(name="tiny" if gpu else "tiny-cpu", batching_model=TINY_512))
    if "medium" in wanted:
        out.append(medium_profile(args))
    if "small" in wanted:
        out.append(small_profile())
    return out


def small_profile() -> Profile:
    """gpt2 (small)'s shape in bf16 (hub weights when cached), for the cells-per-GPU grid (launchers): a LoRA
    cell at the seeds' batch size uses a fraction of a large GPU."""
    overrides = ["model=gpt2", "trainer.precision=bf16"]
    real = hub_cached("openai-community/gpt2")
    if not real:
        overrides.append(f"model.name_or_path={shaped_gpt2(12, 768, 12)}")
    return Profile(
        name="gpt2" if real else "gpt2-random-12x768x12",
        model=tuple(overrides),
        bf16=True,
        dims=(12, 768),
        only=("launchers",),
    )


def medium_profile(args: argparse.Namespace) -> Profile:
    """gpt2-medium in bf16: the hub's weights when they are in the local cache, otherwise a random-init model of
    the same shape (throughput and memory do not depend on the weights) with the tiny model's tokenizer."""
    layers, hidden, heads = (int(x) for x in args.medium_shape.split(","))
    overrides = ["model=gpt2-medium", "trainer.precision=bf16"]
    real = layers == 24 and hidden == 1024 and heads == 16 and hub_cached("openai-community/gpt2-medium")
    if not real:
        folder = shaped_gpt2(layers, hidden, heads)
        overrides += [
            f"model.name_or_path={folder}",
            f"model.num_layers={layers}",
            f"model.hidden_size={hidden}",
        ]
    return Profile(
        name="gpt2-medium" if real else f"gpt2-medium-random-{layers}x{hidden}x{heads}",
        model=tuple(overrides),
        batch_size=args.gpu_batch_size,
        bf16=True,
        dims=(layers, hidden),
        speed_batch=args.gpu_batch_size,  # 16 x 4 = 64 Alpaca-like sequences: about 8,000 tokens per step
        speed_accum=4,
    )


def hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model.safetensors"), str)
    except Exception:
        return False


def shaped_gpt2(layers: int, hidden: int, heads: int) -> str:
    """A GPT-2 of the given shape (vocabulary 50257, 1024 positions), random init, saved once in the cache."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmarks.configs import compose
    from src import models
    from src.atomic import publish_dir
    from src.config import cache_dir

    cfg = compose([])
    folder = cache_dir(cfg) / f"bench-gpt2-{layers}x{hidden}x{heads}"
    if (folder / "config.json").is_file():
        return str(folder)
    tok = models.load_tokenizer(
        models.model_path(cfg.model, cache_dir(cfg))
    )  # the tiny BPE: ids < 512 < 50257

    def write(tmp: Path) -> None:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(
            GPT2Config(
                n_layer=layers,
                n_embd=hidden,
                n_head=heads,
                vocab_size=50257,
                n_positions=1024,
                bos_token_id=tok.eos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.eos_token_id,
            )
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return str(publish_dir(folder, write))  # built under a temporary name, then renamed into place
