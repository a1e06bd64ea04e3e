"""Model and tokenizer loading: hub ids, local folders, and the embedded tiny GPT-2.

Every model, the tiny one included, ends up as an ordinary Hugging Face folder loaded with
`from_pretrained`, so quantisation (QLoRA) is a loading option, not a separate code path.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from src import build
from src.atomic import publish_dir
from src.errors import ConfigError
from src.integrity import folder_problem
from src.specs import Spec

EOS = "<|endoftext|>"


def resolve_precision(precision: str) -> str:
    """`auto` -> bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("trainer.precision='fp16': needs a CUDA GPU; use auto, fp32 or bf16 on CPU")
    if precision != "auto":
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _tiny_key(model_cfg: DictConfig) -> str:
    spec = {
        "build": OmegaConf.to_container(model_cfg.build, resolve=True),
        "tokenizer": OmegaConf.to_container(model_cfg.tokenizer, resolve=True),
        "init_seed": model_cfg.init_seed,
        "pretrain": OmegaConf.to_container(model_cfg.pretrain, resolve=True)
        if model_cfg.get("pretrain")
        else None,
        "corpus": "synthetic-v2",  # the tokenizer's corpus (src/data/synthetic.py): bump when it changes
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE trained on the synthetic corpus and the prompt templates: covers any text
    (byte fallback) while keeping the Alpaca template to a handful of tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from src.data.synthetic import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],  # id 0: inside the vocabulary by construction
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS
    )


def _cached(folder: Path) -> bool:
    """Whether the cache holds this model folder intact (a millisecond: headers only, see folder_problem). A
    corrupt entry is tunegrid's own and rebuildable: it is renamed away first (atomic: a concurrent run sees the
    old folder or none, never one half removed), removed, with one line, and the caller builds it again."""
    if not folder.exists():
        return False
    problem = folder_problem(folder, ("config.json", "tokenizer_config.json"))
    if problem is None and not any(folder.glob("*.safetensors")):
        problem = ("model.safetensors", "missing")
    if problem is None:
        return True
    trash = folder.with_name(f".{folder.name}.corrupt-{secrets.token_hex(4)}")
    try:
        folder.rename(trash)
    except OSError:  # another run moved it away first: build it (publish_dir keeps whichever lands first)
        return False
    shutil.rmtree(trash, ignore_errors=True)
    print(
        f"tunegrid: cached model {folder} is unreadable ({problem[0]}: {problem[1]}); removed, rebuilding it",
        file=sys.stderr,
    )
    return False


def materialise_tiny(model_cfg: DictConfig, cache: Path) -> Path:
    """Build the tiny model + tokenizer once into the cache (a few MB; pretrained as `model.pretrain` says,
    about a minute on 2 CPU cores) and return the folder."""
    folder = cache / f"tiny-{_tiny_key(model_cfg)}"
    if _cached(folder):
        return folder
    from transformers import AutoModelForCausalLM

    def write(tmp: Path) -> None:
        tokenizer = _train_tokenizer(int(model_cfg.tokenizer.vocab_size))
        arch = build.model_config(
            model_cfg.build,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(int(model_cfg.init_seed))
        model = AutoModelForCausalLM.from_config(arch)
        if model_cfg.get("pretrain") and int(model_cfg.pretrain.steps) > 0:
            from src.pretrain import pretrain

            losses = pretrain(model, tokenizer, model_cfg.pretrain, seed=int(model_cfg.init_seed))
            (tmp / "pretraining.json").write_text(
                json.dumps({**losses, **OmegaConf.to_container(model_cfg.pretrain, resolve=True)}, indent=1)
            )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_dir(folder, write)  # concurrent runs never see a half-written folder


def materialise_gguf(gguf: DictConfig, cache: Path) -> Path:
    """Dequantise a GGUF file shipped inside a Python package into a cached Hugging Face folder, once.

    Loading the GGUF directly costs about 30 s per run (transformers dequantises every tensor);
    the cached safetensors folder loads in about a second and also serves QLoRA's 4-bit loading.
    """
    import importlib.util

    spec = importlib.util.find_spec(gguf.package)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"model: needs the package {gguf.package!r}, which is not installed: {gguf.install}"
        )
    source = Path(spec.origin).parent / gguf.file
    if not source.is_file():
        raise ConfigError(
            f"model: {gguf.package} is installed but lacks {gguf.file}; reinstall: {gguf.install}"
        )
    folder = cache / f"gguf-{Path(gguf.file).stem}-{source.stat().st_size}"
    if _cached(folder):
        return folder
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model: reading {gguf.file} needs the 'gguf' package: {gguf.install}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def write(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=gguf.file)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=gguf.file, dtype=torch.float32)
        # A GGUF-loaded model refuses save_pretrained; copy its dequantised weights into a plain one.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return publish_dir(folder, write)


def model_path(model_cfg: DictConfig, cache: Path) -> str:
    """The folder or hub id to load: a user's name_or_path wins, else the tiny build or a packaged GGUF."""
    if model_cfg.get("name_or_path"):
        return str(model_cfg.name_or_path)
    if model_cfg.get("gguf") is not None:
        return str(materialise_gguf(model_cfg.gguf, cache))
    if model_cfg.get("build") is not None:
        return str(materialise_tiny(model_cfg, cache))
    raise ConfigError(f"model={model_cfg.name}: set model.name_or_path (a hub id or a local folder)")


def _hub_error(path: str, exc: Exception) -> ConfigError:
    where = "no such local folder, and " if not Path(path).exists() else ""
    return ConfigError(
        f"model.name_or_path={path!r}: could not load ({type(exc).__name__}); {where}the hub may be unreachable "
        f"(offline?): download it elsewhere and pass model.name_or_path=/path/to/folder"
    )


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:  # hub unreachable, unknown id, or a folder without tokenizer files
        raise _hub_error(path, e) from None
    if tok.pad_token is None:  # GPT-2 ships without one; padding is masked out of the loss anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    model_cfg: DictConfig,
    spec: Spec,
    quantization: Any,
    dtype: torch.dtype,
    attention: str = "sdpa",
    weights: torch.dtype = torch.float32,
):
    """Load the task's model class (causal LM or sequence classifier) with the `attention` kernel; with the
    method's `quantization` node (spec.method.quantised) the base loads in 4-bit: QLoRA's model swap.
    `weights`: the dtype of unquantised weights (fp32 master weights unless trainer.weights_dtype=bf16)."""
    auto = build.model_class(spec.task)
    kwargs: dict[str, Any] = {
        "trust_remote_code": bool(model_cfg.get("trust_remote_code", False)),
        "attn_implementation": attention,
    }
    if spec.num_labels:
        kwargs["num_labels"] = spec.num_labels
    if spec.method.quantised:
        kwargs["quantization_config"] = build.quantization_config(quantization, dtype)
        kwargs["dtype"] = dtype
    else:
        kwargs["dtype"] = weights  # fp32 master weights by default; the Trainer's autocast handles bf16/fp16
    try:
        model = auto.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(path, e) from None
    if (
        getattr(model.config, "pad_token_id", None) is None
    ):  # GPT-2: the classifier finds the last token by it
        model.config.pad_token_id = model.config.eos_token_id
    for module in model.modules():
        # bitsandbytes 0.50 repacks 4-bit weights into an inference-only CPU layout the first time a
        # module runs in eval mode on an AVX512-BF16 CPU, and training after that evaluation fails
        # ("a view of a leaf Variable ... in-place"); keep the trainable layout throughout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    _check_layers(model, model_cfg)
    return model


def _check_layers(model, model_cfg: DictConfig) -> None:
    key = model_cfg.get("num_layers_key")
    actual = getattr(model.config, key, None) if key else None
    if actual is not None and int(actual) != int(model_cfg.num_layers):
        raise ConfigError(
            f"model.num_layers={model_cfg.num_layers}: the loaded model has {actual} ({key}); fix the model YAML"
        )
