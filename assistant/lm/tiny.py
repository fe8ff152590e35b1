"""Tiny random causal LMs built from a config, with an in-process tokenizer.

For unit tests, examples and smoke runs: a 2-layer Llama with hidden size 32 and a byte-level
BPE tokenizer trained in milliseconds on a built-in corpus, with a ChatML chat template like
SmolLM2's. `save_tiny_lm(dir)` writes it as an ordinary Hugging Face directory, so everything that
takes `--model PATH` can run on it.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The rain had not stopped for three days. The river rose and the town waited.",
    "She opened the door and the cold wind rushed in, carrying the smell of salt and smoke.",
    "Write a passage of prose. Rewrite the passage in a formal register. Give one story idea.",
    "A lighthouse keeper counts the ships that never arrive. The storm is coming, bright and loud.",
    "Short sentences. Clear words. Happy, bright, wonderful, joyful, glad, sunny, warm, cheerful.",
    "Sensory words: crimson, velvet, roaring, bitter, fragrant, glittering, smoky, silky, icy.",
    "He said that it was fine, but it was not fine, and everyone in the room knew it.",
    "Outline: 1. the harbour 2. the letter 3. the journey 4. the return home.",
    "0123456789 ,.;:!?'\"()-\n",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def build_tiny_lm(seed: int = 0, hidden: int = 32, layers: int = 2, heads: int = 4, tokenizer=None):
    """(model, tokenizer): a random LlamaForCausalLM sized for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or build_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model, tokenizer


def save_tiny_lm(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny model + tokenizer as a normal Hugging Face directory (usable as --model)."""
    path = Path(path)
    model, tok = build_tiny_lm(seed)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
