"""Generation: sampling token ids from a model."""

from shoshin.generation.sampling import generate, sample_next

__all__ = ["generate", "sample_next"]
