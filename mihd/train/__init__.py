"""Training: the generic Lightning plan, the datamodule and the ``train(cfg)`` runner."""

from ._runner import RunResult, load_slice, train, validate_config

__all__ = ["RunResult", "load_slice", "train", "validate_config"]
