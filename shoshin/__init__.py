"""shoshin: a language-model lab, from a chat corpus to a chatbot you understand end to end."""

from shoshin.generation import generate
from shoshin.loading import load

__version__ = "0.1.0"
__all__ = ["generate", "load", "__version__"]
