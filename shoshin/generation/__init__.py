"""Generation: token ids in, token ids out (engine, sampling), and text at the edges (streaming, chat)."""

from shoshin.generation.engine import Engine, Generation, TokenLogprob, generate
from shoshin.generation.precision import prepare_for_inference
from shoshin.generation.sampling import SamplingParams, naive_generate, sample_next

__all__ = [
    "Engine",
    "Generation",
    "SamplingParams",
    "TokenLogprob",
    "generate",
    "naive_generate",
    "prepare_for_inference",
    "sample_next",
]
