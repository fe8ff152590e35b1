"""The language-model toolkit: models, prompts, the one generation function (and its fast decode path), log-probs, adapters."""
