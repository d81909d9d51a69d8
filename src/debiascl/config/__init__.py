"""Typed configuration loaded from YAML."""

from debiascl.config.loader import config_from_dict, dump_config, load_config
from debiascl.config.migrate import load_run_config
from debiascl.config.schema import RunConfig

__all__ = ["RunConfig", "config_from_dict", "dump_config", "load_config", "load_run_config"]
