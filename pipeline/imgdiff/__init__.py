"""Img-Diff pairs: object-replacement image pairs, their difference areas and difference captions."""

from pipeline.imgdiff.stage import ImgDiffGenerateStage, ImgDiffStep

__all__ = ["ImgDiffGenerateStage", "ImgDiffStep"]
