"""Generation: token ids in, token ids out (engine, sampling), and text at the edges (streaming, chat)."""

from shoshin.generation.engine import Engine, SamplingParams, generate
from shoshin.generation.sampling import naive_generate, sample_next

__all__ = ["Engine", "SamplingParams", "generate", "naive_generate", "sample_next"]
