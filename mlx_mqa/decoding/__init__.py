"""Decoding: prompts to batches, the decode state, greedy/sampled generation and beam search."""

from .beam import beam_search
from .generate import GenerationResult, StepOutput, generate, generate_step, generate_tokens, stream_generate
from .sample_utils import make_logits_processors, make_sampler

__all__ = [
    "GenerationResult",
    "StepOutput",
    "beam_search",
    "generate",
    "generate_step",
    "generate_tokens",
    "make_logits_processors",
    "make_sampler",
    "stream_generate",
]
