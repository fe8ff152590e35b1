"""The policy: base LM + LoRA adapter (actor) and a value head (critic); the reference is the same model with the adapter disabled."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from assistant.lm import adapters
from assistant.lm.adapters import ADAPTER_SUBDIR
from assistant.lm.config import LoraSettings
from assistant.lm.logprobs import token_logprobs
from assistant.lm.models import autocast_context, contiguous_lm_head_input

log = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"

# ----------------------------------------------------------------------------- the policy
def peft_lora_config(lora: LoraSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )

def _has_lora(model: nn.Module) -> bool:
    from peft.tuners.lora import LoraLayer

    return any(isinstance(m, LoraLayer) for m in model.modules())

class Policy:
    """Base LM + LoRA adapter (actor) and value head (critic). The trainer's running state (optimizer,
    KL coefficient, baseline) is reward.rl.step.TrainerState, not part of the model."""

    def __init__(self, model, tokenizer, value_head: nn.Linear, lora: LoraSettings):
        self.model = model  # a peft PeftModel
        self.tokenizer = tokenizer
        self.value_head = value_head
        self.lora = lora
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_base(cls, model: nn.Module, tokenizer, lora_cfg: LoraSettings | None = None) -> "Policy":
        """Wrap a base causal LM with a fresh LoRA adapter (B = 0: the policy starts equal to the
        reference) and a zero value head. The base model is modified in place (peft injects the
        LoRA layers) and its weights are frozen."""
        from peft import get_peft_model

        lora_cfg = lora_cfg or LoraSettings()
        if _has_lora(model):
            raise ValueError("this model already carries LoRA layers; pass a clean base model (or reuse its Policy)")
        for p in model.parameters():
            p.requires_grad_(False)
        pm = get_peft_model(model, peft_lora_config(lora_cfg))
        head = nn.Linear(model.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return cls._finish(pm, tokenizer, head, lora_cfg)

    @classmethod
    def _finish(cls, pm, tokenizer, head: nn.Linear, lora_cfg: LoraSettings) -> "Policy":
        for _, p in pm.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        device = next(pm.parameters()).device
        head = head.to(device=device, dtype=torch.float32)
        contiguous_lm_head_input(pm.get_base_model())
        pm.eval()
        return cls(pm, tokenizer, head, lora_cfg)

    def save(self, directory: str | Path) -> None:
        """Write adapter/ (peft) and value_head.safetensors into `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory / ADAPTER_SUBDIR))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()},
                  str(directory / VALUE_HEAD_FILE))

    @classmethod
    def load(cls, base_model: nn.Module, tokenizer, directory: str | Path, lora_cfg: LoraSettings | None = None) -> "Policy":
        """A trainable Policy from a version directory (adapter/ + value_head.safetensors)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / VALUE_HEAD_FILE).exists():
            raise FileNotFoundError(f"{directory} holds no {VALUE_HEAD_FILE}: the critic would be random")
        if _has_lora(base_model):
            raise ValueError("this model already carries LoRA layers; pass a clean base model")
        for p in base_model.parameters():
            p.requires_grad_(False)
        pm = adapters.attach(base_model, adapters.adapter_dir(directory), "default", trainable=True)
        state = load_file(str(directory / VALUE_HEAD_FILE))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return cls._finish(pm, tokenizer, head, lora_cfg or LoraSettings())

    # ------------------------------------------------------------------ parameters
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward pass
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_resp: int, temperature: float,
        autocast: bool = True, share_prefix: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32, scaled by 1/temperature) predicting each of the last n_resp tokens, and
        the critic's value of the state before each of them. Shapes (B, n_resp, V) and (B, n_resp).

        The K samples of one prompt share it, so with `share_prefix` each distinct prompt is run
        once and its key/value cache is fanned out to its samples (gradients flow back through the
        shared cache); only the responses are run per sample. Same numbers as the full forward
        (tested), about half the work at K=4."""
        P = input_ids.shape[1] - n_resp
        if share_prefix and P > 0:
            prefix = torch.cat([input_ids[:, :P], attention_mask[:, :P].to(input_ids.dtype)], 1)
            uniq, inverse = torch.unique(prefix, dim=0, return_inverse=True)
            if uniq.shape[0] < input_ids.shape[0]:
                return self._forward_shared(input_ids, attention_mask, n_resp, temperature, autocast, uniq, inverse)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        with autocast_context(self.device, autocast):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=True,
                logits_to_keep=n_resp + 1,
                use_cache=False,
            )
        logits = out.logits[:, -n_resp - 1 : -1]
        hidden = out.hidden_states[-1][:, -n_resp - 1 : -1]
        return self._finish_forward(logits, hidden, temperature)

    def _forward_shared(self, input_ids, attention_mask, n_resp, temperature, autocast, uniq, inverse):
        """forward() with each distinct prompt run once: prefix pass -> cache fanned out -> responses."""
        P = input_ids.shape[1] - n_resp
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        u_ids, u_mask = uniq[:, :P], uniq[:, P:].to(attention_mask.dtype)
        with autocast_context(self.device, autocast):
            pre = self.model(
                input_ids=u_ids,
                attention_mask=u_mask,
                position_ids=(u_mask.long().cumsum(-1) - 1).clamp(min=0),
                output_hidden_states=True,
                logits_to_keep=1,
                use_cache=True,
            )
            # the last prompt position predicts the first response token
            logits = pre.logits[inverse, -1:]
            hidden = pre.hidden_states[-1][inverse, -1:]
            if n_resp > 1:  # the responses (all but their last token) attend to the shared prompt cache
                cache_arg = self.cache_argument
                cache = getattr(pre, cache_arg)
                cache.reorder_cache(inverse)
                suf = self.model(
                    input_ids=input_ids[:, P:-1],
                    attention_mask=attention_mask[:, :-1],
                    position_ids=position_ids[:, P:-1],
                    output_hidden_states=True,
                    use_cache=True,
                    **{cache_arg: cache},
                )
                logits = torch.cat([logits, suf.logits], 1)
                hidden = torch.cat([hidden, suf.hidden_states[-1]], 1)
        return self._finish_forward(logits, hidden, temperature)

    @functools.cached_property
    def cache_argument(self) -> str:
        """transformers >= 5.2x names the KV cache `cache` (in and out); older models `past_key_values`.
        Read once from the model's forward signature."""
        import inspect

        params = inspect.signature(self.model.get_base_model().forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def _finish_forward(self, logits, hidden, temperature):
        logits = logits.float() / temperature
        with torch.autocast(self.device.type, enabled=False):
            values = self.value_head(hidden.float()).squeeze(-1)
        return logits, values

    @torch.no_grad()
    def reference_logprobs(self, input_ids, attention_mask, n_resp: int, temperature: float, autocast: bool = True):
        """Log-probs of the response tokens under the reference (the adapter disabled)."""
        with self.model.disable_adapter():
            logits, _ = self.forward(input_ids, attention_mask, n_resp, temperature, autocast)
        return token_logprobs(logits, input_ids[:, -n_resp:])

