"""Data: document sources, sentencepiece tokenizer, grain input pipeline. Host numpy only, no JAX."""
