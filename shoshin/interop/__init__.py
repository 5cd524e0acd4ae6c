"""Interoperability with Hugging Face `transformers`: load GPT-1/GPT-2 checkpoints, export runs back."""
