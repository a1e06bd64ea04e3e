"""From the composed config to a validated, resolved one, before any model or data is loaded.

Hydra composes the YAML; `validate` resolves every key, checks it against the schema (schema.py, pydantic
models: one per config group) and what the chosen method and task can do (src/specs.py), and returns the
resolved config. A bad value fails in one line naming the key, the value and what is allowed, in about a
second, instead of minutes later inside PEFT or the Trainer. Nothing here imports torch.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from pydantic import ValidationError

from src import specs
from src.atomic import write_bytes
from src.config.identity import cell_name, config_hash
from src.config.schema import Model, RunConfig
from src.config.values import Unresolved, one_line
from src.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CONF_DIR = REPO_ROOT / "conf"
RESOLVED = "config.yaml"  # the validated, resolved config in a run folder: `python -m src.train` reads it


def _mul(*xs: Any) -> float:
    out = 1.0
    for x in xs:
        out *= float(x)
    return out


def _blocks_from(n: Any, total: Any) -> list[int] | None:
    """Block indices n..total-1 that adapters go on, or None (all blocks) when nothing is frozen."""
    n, total = int(n), int(total)
    return None if n <= 0 else list(range(n, total))


def without_hydra(cfg: DictConfig) -> DictConfig:
    """The task's config from a config that holds Hydra's node too (a sweep's job config, `_root_`)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])


def _cell(*, _root_: DictConfig) -> str:
    """`${tg.cell:}` in hydra.run.dir and hydra.sweep.subdir: the run's folder name, from its overrides and
    the hash of its validated config (identity.py). A config that does not validate gets the hash of what
    was composed, so that its `invalid` record lands in a folder of its own, beside no other run's."""
    task = without_hydra(_root_)
    try:
        digest = config_hash(validate(task))
    except Exception:  # noqa: BLE001 - run_job reports the error in one line; the folder only needs a name
        digest = config_hash(OmegaConf.to_container(task, resolve=False))
    overrides = OmegaConf.select(_root_, "hydra.overrides.task", default=None) or []
    return cell_name([str(o) for o in overrides], digest)


def register_resolvers() -> None:
    """Resolvers the YAML uses (`${tg.mul:...}` etc.); idempotent so tests can import freely."""
    resolvers: dict[str, Callable[..., Any]] = {
        "tg.mul": _mul,
        "tg.blocks_from": _blocks_from,
        "tg.if_set": lambda n, value: value if int(n) > 0 else None,
        "tg.under": lambda root, name: None if root in (None, "", "null") else f"{root}/{name}",
        "tg.cell": _cell,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _resolve(node: Any) -> Any:
    """The config as plain data, every interpolation resolved; one that fails becomes an Unresolved value,
    so that the error names the key the user set (`frozen_blocks='x'`), not a key that interpolates it."""
    if isinstance(node, DictConfig | ListConfig):
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        out: dict | list = {} if isinstance(node, DictConfig) else []
        for key in keys:
            try:
                value = _resolve(node[key])
            except Exception as e:  # omegaconf raises several types; all mean the same to the user
                value = Unresolved(e)
            if isinstance(out, dict):
                out[key] = value
            else:
                out.append(value)
        return out
    return node


def _first_unresolved(tree: Any, path: str = "") -> str | None:
    if isinstance(tree, Unresolved):
        return f"{path}: cannot be resolved ({tree.reason})"
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for k, v in items:
        if found := _first_unresolved(v, f"{path}.{k}" if path else str(k)):
            return found
    return None


def validate(cfg: DictConfig) -> DictConfig:
    """Check every key, then what the method and task can do with this model and data; raise ConfigError
    (one line) on the first problem. Returns the resolved config (no interpolations left)."""
    tree = _resolve(cfg)
    if not isinstance(tree.get("model"), dict):
        raise ConfigError(
            "model: missing; a config holds every group (python -m src.run --cfg job prints one)"
        )
    try:  # first the model: other bounds (rank, frozen_blocks, max_seq_len) depend on it
        model = Model.model_validate(tree["model"])
    except ValidationError as e:
        raise ConfigError(one_line(e, Model, ("model",))) from None
    try:
        RunConfig.model_validate(tree, context={"model": model})
    except ValidationError as e:
        raise ConfigError(one_line(e, RunConfig, derived=lambda key: _interpolated(cfg, key))) from None
    if problem := _first_unresolved(tree):  # inside a node passed through to a library
        raise ConfigError(problem)
    resolved = OmegaConf.create(tree)
    spec = specs.of(resolved)  # raises ConfigError for what the method or task cannot do
    needs = [what for what, needed in spec.needs_bitsandbytes(resolved.optim).items() if needed]
    if needs and not _importable("bitsandbytes"):
        raise ConfigError(
            f"{needs[0]}: needs bitsandbytes, which is not installed (pip install 'bitsandbytes>=0.45')"
        )
    return resolved


def _interpolated(cfg: DictConfig, key: str) -> bool:
    """Whether the composed config derives this key from others (`lr: ${tg.mul:...}`)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node and OmegaConf.is_interpolation(node, leaf)


def _importable(module: str) -> bool:
    """Imported for real (not just found): an installed package can still fail to import."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def save_resolved(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the validated config into the run folder, for `python -m src.train <run_dir>/config.yaml`."""
    return write_bytes(Path(run_dir) / RESOLVED, OmegaConf.to_yaml(cfg))


def load_resolved(path: Path) -> DictConfig:
    """A config written by save_resolved (or any resolved config file), validated again."""
    try:
        raw = OmegaConf.load(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot be read as a config ({type(e).__name__}: {e})") from None
    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{path}: not a config (a YAML mapping)")
    return validate(raw)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}, for W&B run config and CSV columns."""
    out: dict[str, Any] = {}
    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = d
    return out


def cache_dir(cfg: DictConfig) -> Path:
    """Where the tiny model, its tokenizer and tokenised data live: cfg.cache_dir, $TUNEGRID_CACHE or <repo>/.cache."""
    path = Path(cfg.get("cache_dir") or os.environ.get("TUNEGRID_CACHE") or REPO_ROOT / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path
