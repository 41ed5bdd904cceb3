"""Video data: reading / writing videos and frame folders, preprocessing, clip sampling, and a
tiny synthetic sample (``jaxvedit.data.video``)."""

from jaxvedit.data.video import (
    DEFAULT_FOLDER_FPS, IMAGE_EXTENSIONS, Video, VideoInfo, clip_span, extract_clip,
    from_model_range, make_sample_dataset, make_sample_video, probe_video, random_clip, read_video,
    resize_center_crop, sample_clip_starts, save_video, synthetic_frames, to_model_range,
    write_frames, write_gif, write_video,
)

__all__ = [
    "DEFAULT_FOLDER_FPS", "IMAGE_EXTENSIONS", "Video", "VideoInfo", "clip_span", "extract_clip",
    "from_model_range", "make_sample_dataset", "make_sample_video", "probe_video", "random_clip",
    "read_video", "resize_center_crop", "sample_clip_starts", "save_video", "synthetic_frames",
    "to_model_range", "write_frames", "write_gif", "write_video",
]
