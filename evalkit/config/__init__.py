"""The sweep config: schema (pydantic models), loading (YAML, presets, ``--set``) and one error translator.

Paths inside a config (``prompts.file``, a local ``model.id``, ``model.gguf_file``) are relative to
the config file's directory; ``output_dir`` is relative to the working directory. Importing this
package imports neither torch nor any model library.
"""

from evalkit.config.loading import (apply_overrides, config_from_dict, load_config, metric_list, metric_spec,
                                    parse_yaml, preset_names, preset_path)
from evalkit.config.model import DiffusersModel, HFModel, OpenAIModel, VLLMModel, VLMModel
from evalkit.config.schema import (BACKEND_NAMES, DEFAULT_METRICS, MODELS, CIConfig, GridConfig, ImageOptions, Message,
                                   MetricSpec, ModelConfig, PromptItem, PromptsConfig, SweepConfig)

__all__ = ["BACKEND_NAMES", "DEFAULT_METRICS", "MODELS", "DiffusersModel", "HFModel", "OpenAIModel", "VLLMModel",
           "VLMModel", "CIConfig", "GridConfig", "ImageOptions", "Message", "MetricSpec",
           "ModelConfig", "PromptItem", "PromptsConfig", "SweepConfig", "apply_overrides", "config_from_dict",
           "load_config", "metric_list", "metric_spec", "parse_yaml", "preset_names", "preset_path"]
