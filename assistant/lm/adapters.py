"""LoRA adapters on a base model: the one loader, used to serve, evaluate and train.

A policy version directory keeps its peft adapter in ``adapter/`` (ADAPTER_SUBDIR). Every adapter
of a base model shares one LoraConfig, so they swap in place, from weights kept in memory
(WeightCache): the Generator switches between profiles' versions that way, and serves the base
model as the same adapter filled with zeros. The reference model is the same model with the
adapter disabled (assistant.lm.logprobs.reference).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

ADAPTER_SUBDIR = "adapter"
"""A policy version directory keeps its peft adapter here (see storage.artifacts)."""


def adapter_dir(version_dir: str | Path) -> Path:
    """The adapter folder of a policy version directory."""
    return Path(version_dir) / ADAPTER_SUBDIR


def has_adapters(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model carrying at least one adapter."""
    return bool(getattr(model, "peft_config", None))


def attach(model: torch.nn.Module, directory: str | Path, name: str, *, trainable: bool = False,
           active: bool = True) -> torch.nn.Module:
    """Load the adapter in `directory` onto `model` under `name`; returns the peft model (the same
    object when `model` already is one). With `active`, it becomes the adapter in use."""
    from peft import PeftModel

    directory = Path(directory)
    check_readable(directory)  # before peft touches the model: a bad file must not half-inject it
    if has_adapters(model):
        model.load_adapter(str(directory), adapter_name=name, is_trainable=trainable)
        if active:
            model.set_adapter(name)
        return model
    return PeftModel.from_pretrained(model, str(directory), adapter_name=name, is_trainable=trainable)


def check_readable(directory: str | Path) -> None:
    """Raise (FileNotFoundError, ValueError, SafetensorError) unless `directory` holds a parseable
    adapter_config.json and readable adapter weights."""
    import json

    from safetensors import safe_open

    directory = Path(directory)
    if not (directory / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{directory.name}/ holds no adapter_config.json")
    json.loads((directory / "adapter_config.json").read_text())
    weights = directory / "adapter_model.safetensors"
    if weights.is_file():
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                f.get_tensor(key)


def strip_injected(model: torch.nn.Module) -> torch.nn.Module:
    """Put back the base layers a failed ``PeftModel.from_pretrained`` left wrapped in LoRA layers."""
    for name, module in list(model.named_modules()):
        base = getattr(module, "base_layer", None)
        if base is None or "lora" not in type(module).__module__:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, base)
    return model


def swap(model: torch.nn.Module, directory: str | Path, name: str) -> torch.nn.Module:
    """Serve the adapter in `directory` (as `name`) and drop every other adapter: the hot swap."""
    model = attach(model, directory, name)
    for old in [a for a in list(model.peft_config) if a != name]:
        model.delete_adapter(old)
    model.eval()
    return model


@dataclass
class AdapterWeights:
    """One adapter read into memory: its peft config and its weights (keys as saved, without the
    adapter name), on the serving device."""

    config: Any
    state_dict: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict.values())


def read_weights(directory: str | Path, device: str) -> AdapterWeights:
    """The adapter in `directory`, checked readable and loaded onto `device` (raises like
    check_readable for a missing or damaged one)."""
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    check_readable(directory)
    return AdapterWeights(PeftConfig.from_pretrained(str(directory)), load_peft_weights(str(directory), device=device))


class WeightCache:
    """A small LRU of AdapterWeights by version id, so serving profiles in turn does not reread
    their adapters from disk at every switch."""

    def __init__(self, size: int = 8):
        self.size = max(0, int(size))
        self._items: OrderedDict[int, AdapterWeights] = OrderedDict()

    def get(self, version_id: int, directory: str | Path, device: str) -> AdapterWeights:
        w = self._items.get(version_id)
        if w is not None:
            self._items.move_to_end(version_id)
            return w
        w = read_weights(directory, device)
        if self.size:
            self._items[version_id] = w
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return w

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self._items.values())

    def __contains__(self, version_id: int) -> bool:
        return version_id in self._items

    def __len__(self) -> int:
        return len(self._items)


def swap_in_place(model: torch.nn.Module, weights: AdapterWeights | None) -> bool:
    """Copy `weights` into the tensors of `model`'s one live adapter, keeping its name and modules,
    so graphs compiled over the model stay valid; `None` copies zeros (every LoRA delta is 0:
    exactly the base model). False, with nothing changed, when there is no single adapter to swap
    into or the new one has another rank, alpha, shapes or other target modules (it must then be
    loaded with `swap`). The same structure means the same scaling: only weights are copied (what
    peft.utils.hotswap does, without its walks over every module: a switch between profiles costs
    a copy of the adapter's weights)."""
    from peft.utils.hotswap import check_hotswap_configs_compatible

    if not has_adapters(model) or len(model.peft_config) != 1:
        return False
    name = next(iter(model.peft_config))
    live = {k: p for k, p in model.named_parameters() if "lora_" in k and (f".{name}." in k or k.endswith(f".{name}"))}
    if weights is None:
        with torch.no_grad():
            for t in live.values():
                t.zero_()
        return True
    old, new = model.peft_config[name], weights.config
    if _structure(old) != _structure(new):
        return False
    try:
        check_hotswap_configs_compatible(old, new)
    except ValueError as e:  # e.g. another dropout or rank pattern
        log.info("in-place hot swap not possible (%s): loading the adapter anew", e)
        return False
    state = _with_adapter_name(weights.state_dict, name)
    if set(state) != set(live) or any(state[k].shape != live[k].shape for k in live):
        return False  # checked before anything is copied
    with torch.no_grad():
        for k, t in live.items():
            t.copy_(state[k])
    return True


def _structure(cfg: Any) -> tuple:
    return (getattr(cfg, "r", None), getattr(cfg, "lora_alpha", None),
            frozenset(getattr(cfg, "target_modules", None) or ()))


def _with_adapter_name(state_dict: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Saved keys (`...q_proj.lora_A.weight`) as the live model names them (`...lora_A.<name>.weight`;
    an embedding's `...lora_embedding_A` becomes `...lora_embedding_A.<name>`)."""
    out = {}
    for key, value in state_dict.items():
        head, sep, tail = key.rpartition("lora_")
        if sep:
            part, dot, rest = tail.partition(".")
            key = f"{head}lora_{part}.{name}" + (f".{rest}" if dot else "")
        out[key] = value
    return out


def detach(model: torch.nn.Module) -> torch.nn.Module:
    """The base model with every adapter removed (its weights untouched)."""
    return model.unload() if has_adapters(model) else model
