"""Video modality: AnimateDiff (image UNet + MotionAdapter) and Wan 2.1 (flow transformer), a tiny random preset
and the ``demo`` preset (the shipped image demo model + a motion adapter)."""
from diffalign.modalities.video.adapter import VideoAdapter
from diffalign.modalities.video.io import fit_clip, read_video, write_video
from diffalign.modalities.video.options import VideoOptions
from diffalign.modalities.video.preferences import load_video_preferences

__all__ = ["VideoAdapter", "VideoOptions", "fit_clip", "read_video", "write_video", "load_video_preferences"]
