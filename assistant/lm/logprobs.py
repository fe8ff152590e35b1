"""Log-probabilities of text under a model, and KL to the reference: the one implementation.

The reference is the same model with its LoRA adapter disabled (`reference(model)`), so no copy of
the base is ever kept. RL uses `token_logprobs` on its own forward's logits; evaluation, the
learner's guards and the simulation score finished texts with `text_logprobs` / `kl_to_reference`.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] at every position: (B, T, V), (B, T) -> (B, T)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def reference(model):
    """Context in which `model` behaves as the reference: peft's disable_adapter() when the model
    carries adapters, else nothing (a plain model is its own reference)."""
    if hasattr(model, "disable_adapter") and getattr(model, "peft_config", None):
        return model.disable_adapter()
    return nullcontext()


def _encode(tokenizer, context: str, text: str, max_text_tokens: int) -> tuple[list[int], int]:
    """Token ids of context + text (encoded separately so the boundary is exact) and the index of
    the first text token. An empty context starts from BOS (or EOS) so the first word is scored."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ctx = [start] if start is not None else []
    txt = tokenizer(text, add_special_tokens=False)["input_ids"][:max_text_tokens]
    return ctx + txt, len(ctx)


@torch.no_grad()
def _score(model, tokenizer, contexts: Sequence[str], texts: Sequence[str], batch: int, max_text_tokens: int):
    """Per (context, text): the next-token log-distributions over the text's positions (T, V) and
    the text's token ids (T,), float32 on the CPU. Rows are right-padded in batches of `batch`
    (positions stay as in an unpadded pass); the model is run in eval mode."""
    if len(contexts) != len(texts):
        raise ValueError("contexts and texts must pair up")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(texts), batch):
            rows = [_encode(tokenizer, c, t, max_text_tokens) for c, t in zip(contexts[i:i + batch], texts[i:i + batch])]
            width = max(len(ids) for ids, _ in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            att = torch.zeros((len(rows), width), dtype=torch.long)
            for j, (r, _) in enumerate(rows):
                ids[j, : len(r)] = torch.tensor(r)
                att[j, : len(r)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float().cpu()
            for j, (r, start) in enumerate(rows):
                if start < 1 or len(r) <= start:
                    yield torch.zeros((0, logits.shape[-1])), torch.zeros(0, dtype=torch.long)
                    continue
                yield torch.log_softmax(logits[j, start - 1 : len(r) - 1], dim=-1), ids[j, start : len(r)]
    finally:
        model.train(was_training)


def text_logprobs(model, tokenizer, contexts: Sequence[str], texts: Sequence[str], *, batch: int = 8,
                  max_text_tokens: int = 256) -> list[torch.Tensor]:
    """For each (context, text): log p of each text token given the context and the text so far,
    shape (T,). A text with no tokens gives an empty tensor."""
    return [lp.gather(-1, tgt[:, None]).squeeze(-1)
            for lp, tgt in _score(model, tokenizer, contexts, texts, batch, max_text_tokens)]


def sequence_logprobs(model, tokenizer, contexts: Sequence[str], texts: Sequence[str], **kw) -> list[float]:
    """Sum of log p(text tokens | context) per (context, text)."""
    return [float(lp.sum()) for lp in text_logprobs(model, tokenizer, contexts, texts, **kw)]


def kl_to_reference(model, tokenizer, contexts: Sequence[str], samples: Sequence[str], reference_model=None,
                    *, batch: int = 8, max_text_tokens: int = 256) -> dict[str, float]:
    """KL(policy || reference) on the policy's own samples (both at temperature 1).

    "kl": the exact KL between the two next-token distributions, sum_v p(v) (log p(v) - log q(v)),
    averaged over all sample tokens; "kl_k1": the sampled-token estimate log p(x) - log q(x) per
    token (the one RLHF reward shaping uses); "kl_seq": k1 summed per sample, averaged over the
    samples. The reference is `reference_model` if given, else `model` with its adapter disabled."""
    pol = list(_score(model, tokenizer, contexts, samples, batch, max_text_tokens))
    with nullcontext() if reference_model is not None else reference(model):
        ref = list(_score(reference_model if reference_model is not None else model, tokenizer, contexts, samples,
                          batch, max_text_tokens))
    kl_sum, n, seq = 0.0, 0, []
    for (lp, tgt), (lq, _) in zip(pol, ref):
        if not len(tgt):
            continue
        kl_sum += float((lp.exp() * (lp - lq)).sum())
        seq.append(float((lp.gather(1, tgt[:, None]) - lq.gather(1, tgt[:, None])).sum()))
        n += len(tgt)
    if not n:
        return {"kl": 0.0, "kl_k1": 0.0, "kl_seq": 0.0, "tokens": 0}
    return {"kl": max(0.0, kl_sum / n), "kl_k1": sum(seq) / n, "kl_seq": sum(seq) / len(seq), "tokens": n}
