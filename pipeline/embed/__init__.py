"""Embeddings and CLIP scores (table `embeddings`), and the kNN index built over them."""

from pipeline.embed.embed import EmbedStage  # noqa: F401  (registers `embed`)
