"""The columns of a run's samples table, one schema per run kind (read by the writer, scoring and reports)."""

from __future__ import annotations

from evalkit.generation.base import STAT_COLUMNS
from evalkit.settings import ImageSetting, Setting

TEXT_SETTING = list(Setting.model_fields)  # temperature, top_p, top_k, min_p
IMAGE_SETTING = list(ImageSetting.model_fields)  # guidance_scale, num_inference_steps, scheduler, eta
# a text sample (also of a scored file, which has no token statistics)
BASE_SAMPLE_COLUMNS = ["prompt_id", "prompt", "setting_id", *TEXT_SETTING, "sample_index", "seed", "text",
                       "num_new_tokens", "finish_reason", "token_ids"]
SAMPLE_COLUMNS = [*BASE_SAMPLE_COLUMNS, *STAT_COLUMNS]
# image-to-text: the image the sample answers (a copy inside the run directory, relative path) and the
# image's reference captions
VLM_COLUMNS = ["prompt_image", "references"]
# text-to-image: the image file (relative to the run directory) and its size
IMAGE_COLUMNS = ["prompt_id", "prompt", "setting_id", *IMAGE_SETTING, "sample_index", "seed", "text", "image_path",
                 "width", "height"]

COLUMNS = {
    "text": SAMPLE_COLUMNS,
    "image-to-text": SAMPLE_COLUMNS + VLM_COLUMNS,
    "text-to-image": IMAGE_COLUMNS,
    "scored": BASE_SAMPLE_COLUMNS,  # + VLM_COLUMNS when the file names images
}
