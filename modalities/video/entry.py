"""The video modality's registry entry (``diffalign.registry``; entry point ``video`` of group diffalign.modalities).

Rewards: the generic ones resolve by name (an image reward then sees frames (B, F, C, H, W)); per-frame
reductions live with the rewards. Data: the ``video_jsonl`` preference layout (modalities/video/preferences.py)."""
from __future__ import annotations

from diffalign.modalities.video.options import VideoOptions
from diffalign.registry import ModalityEntry


def build(options: VideoOptions, prompts, device):
    from diffalign.modalities.video.adapter import VideoAdapter
    return VideoAdapter.from_options(options, device=device)


def readers():
    from diffalign.modalities.video.preferences import FORMAT, load_video_preferences
    return {FORMAT: load_video_preferences}


MODALITY = ModalityEntry(options=VideoOptions, build=build, readers=readers)
