"""LoRA adapters on a base model: the one loader, used to serve, evaluate and train.

A policy version directory keeps its peft adapter in ``adapter/`` (ADAPTER_SUBDIR). Every adapter
of a base model shares one LoraConfig, so they swap in place; the reference model is the same
model with the adapter disabled (assistant.lm.logprobs.reference).
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def swap_in_place(model: torch.nn.Module, directory: str | Path, device: str) -> bool:
    """Copy the adapter in `directory` into the tensors of `model`'s one live adapter
    (peft.utils.hotswap), keeping its name and modules, so graphs compiled over the model stay
    valid. False, with nothing changed, when there is no single adapter to swap into or the new one
    has another rank or other target modules (it must then be loaded with `swap`)."""
    from peft import PeftConfig
    from peft.utils.hotswap import hotswap_adapter

    if not has_adapters(model) or len(model.peft_config) != 1:
        return False
    name = next(iter(model.peft_config))
    old, new = model.peft_config[name], PeftConfig.from_pretrained(str(directory))
    if (getattr(old, "r", None), set(getattr(old, "target_modules", None) or ())) != \
            (getattr(new, "r", None), set(getattr(new, "target_modules", None) or ())):
        return False
    try:
        hotswap_adapter(model, str(directory), adapter_name=name, torch_device=device)
    except (ValueError, RuntimeError, KeyError) as e:  # e.g. another alpha
        log.info("in-place hot swap not possible (%s): loading the adapter anew", e)
        return False
    return True


def detach(model: torch.nn.Module) -> torch.nn.Module:
    """The base model with every adapter removed (its weights untouched)."""
    return model.unload() if has_adapters(model) else model
