"""Interoperability with Hugging Face `transformers`: load GPT-2, GPT-1, Llama and Qwen3
checkpoints, export runs back."""
