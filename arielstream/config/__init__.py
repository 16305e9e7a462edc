"""What a run does: the options (:mod:`.options`), the order of the steps (:mod:`.recipe`) and the TOML template."""

from ..errors import ConfigError
from .options import CalibrationConfig, RunOptions, build_config, load_config, load_run_options

__all__ = ["CalibrationConfig", "ConfigError", "RunOptions", "build_config", "load_config", "load_run_options"]
