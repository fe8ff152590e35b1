"""Configuration dataclasses for producing text.

One dataclass per component. Flags (app.py), environment variables and tests fill
them; nothing else reads globals. Every field says what it means.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "assets"
"""The repository's assets/ folder: prompt sets, style samples, examples."""

MODES = ("continue", "restyle", "inspire")
INSPIRE_KINDS = ("ideas", "openings", "outline")
BUILTIN_STYLES = ("formal", "casual", "concise", "vivid", "poetic")

# Documented limits on request sizes (also enforced by the API and the CLI).
MAX_TEXT_CHARS = 20_000
MAX_SAMPLE_CHARS = 10_000
MAX_K = 8
MAX_DRAW = 16
MAX_NEW_TOKENS = 512
MIN_SAMPLING_TEMPERATURE = 1e-3
"""Temperatures below this sample greedily (dividing logits by less overflows to inf)."""
MAX_KEYWORDS = 32
MAX_KEYWORD_CHARS = 64

BUNDLED_EMBEDDER = "all-MiniLM-L6-v2"
"""The name the bundled embedder's vectors are cached under."""


def embedder_name(embedder) -> str:
    """A stable name for an embedder's cache keys."""
    return getattr(embedder, "inkloop_name", None) or BUNDLED_EMBEDDER


def default_data_dir() -> Path:
    """Where the database, versions and exports live unless --data-dir says otherwise."""
    return Path(os.environ.get("INKLOOP_DATA_DIR", Path.home() / ".inkloop"))


def default_cache_dir() -> Path:
    """Where converted models (GGUF -> safetensors) are cached, shared by every data dir."""
    env = os.environ.get("INKLOOP_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "inkloop" if xdg else Path.home() / ".cache" / "inkloop"


@dataclass
class ModelSettings:
    """Which base language model and embedder to load, and on what device."""

    model_path: str | None = None
    """A local Hugging Face causal-LM directory; None means the bundled SmolLM2-135M-Instruct."""
    embedder_path: str | None = None
    """A local sentence-transformers directory; None means the bundled all-MiniLM-L6-v2."""
    device: str = "auto"
    """"auto" (cuda when torch sees a GPU, else cpu), "cpu" or "cuda"."""
    dtype: str = "auto"
    """Weights dtype for the base model: "auto" (bf16 on GPU and on CPUs with fast bf16, else fp32),
    "bfloat16", "float16" or "float32"."""
    cache_dir: Path = field(default_factory=default_cache_dir)
    """Where the bundled GGUF is cached as plain safetensors after its first conversion."""
    num_threads: int | None = None
    """torch intra-op threads for this process (None leaves torch's default)."""


@dataclass
class GenerationSettings:
    """Sampling controls exposed in the UI, API and CLI."""

    k: int = 3
    """Number of candidate suggestions per request (1..MAX_K)."""
    temperature: float = 0.8
    """Softmax temperature; 0 means greedy (then only one distinct candidate is possible)."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_new_tokens: int = 64
    """Upper bound on tokens generated per candidate."""
    seed: int | None = None
    """Seed for reproducible sampling; None draws a fresh one."""
    repetition_penalty: float = 1.15
    """transformers' repetition penalty (1.0 disables it)."""
    min_new_tokens: int = 4
    """Candidates shorter than this are not cut at a sentence boundary."""
    max_rounds: int = 3
    """Extra generate calls allowed to top up K distinct candidates after dedup."""
    draw: int = 0
    """Candidates drawn in the first batched call when the app chooses which K to show (the
    reward-guided choice); 0 or <= k draws exactly k. All distinct ones come back (at most
    max(k, draw)); top-up rounds only run to reach k."""
    variety: bool = False
    """Write the K candidates from different angles (assistant.prompts.ANGLES: as asked, sensory
    detail, brevity, warm tone, surprise) in continue and inspire, so they differ in more than
    sampling noise and the person's ratings say which way they lean. The request's stored prompt
    stays the one as asked: that is what RL rolls the policy out on."""
    fast_path: bool = True
    """Use the compiled decode path (assistant.lm.decode) once it is ready for the request's
    shape; False always uses transformers' generate (same tokens when greedy, slower)."""

    def validate(self) -> None:
        if not 1 <= int(self.k) <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise ValueError(f"temperature must be in [0, 5], got {self.temperature}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= int(self.draw) <= MAX_DRAW:
            raise ValueError(f"draw must be between 0 and {MAX_DRAW}, got {self.draw}")
        if not 1 <= int(self.max_new_tokens) <= MAX_NEW_TOKENS:
            raise ValueError(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS}, got {self.max_new_tokens}")


@dataclass
class LoraSettings:
    """The one LoRA configuration shared by every policy version (so adapters are swappable)."""

    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA path (0 keeps rollouts and updates consistent)."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names to adapt; the default fits Llama/Qwen/SmolLM-style attention."""


@dataclass
class AppSettings:
    """Everything `inkloop serve` needs."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless the person asks otherwise."""
    port: int = 7860
    """TCP port for the UI and the REST API."""
    data_dir: Path = field(default_factory=default_data_dir)
    """Database, policy versions, reward models and exports."""
    profile: str = "default"
    """Profile used when a request names none."""
    model: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / "inkloop.db"
