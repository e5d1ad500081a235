"""Diffusion pipelines for image negatives and Img-Diff pairs: loading (local folders, single
files, tiny random-weight pipelines), Prompt-to-Prompt pairs from a shared latent, inpainting
composited onto the source, and grounding masks for the edited words.

Importing this package is cheap: torch and diffusers load when a function first needs them.
"""

from pipeline.diffusion.grounding import GROUNDINGS, GroundingQuery, box_mask, cross_attention_maps, ground, register_grounding
from pipeline.diffusion.inpaint import composite, inpaint
from pipeline.diffusion.loading import LoadedPipeline, PipelineCache, fast_tokenizer, load_pipeline
from pipeline.diffusion.p2p import Prompt2PromptProcessor, generate_pairs, token_mapper

__all__ = [
    "GROUNDINGS", "GroundingQuery", "LoadedPipeline", "PipelineCache", "Prompt2PromptProcessor", "box_mask", "composite",
    "cross_attention_maps", "fast_tokenizer", "generate_pairs", "ground", "inpaint", "load_pipeline", "register_grounding",
    "token_mapper",
]
