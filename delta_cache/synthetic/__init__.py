"""Synthetic text-to-video data with known foreground: moving shapes, their prompts, and an analyser."""

from .analyse import PromptCheck, VideoAnalysis, analyse_video, check_video
from .prompts import ObjectSpec, SceneSpec, sample_scene, sample_scene_in_split, vocabulary
from .videos import SyntheticVideo, make_video, render_scene

__all__ = [
    "ObjectSpec", "PromptCheck", "SceneSpec", "SyntheticVideo", "VideoAnalysis", "analyse_video", "check_video",
    "make_video", "render_scene", "sample_scene", "sample_scene_in_split", "vocabulary",
]
