"""Training: the generic Lightning plan, the datamodule and the ``train(cfg)`` runner."""

from ._runner import RunResult, check_config, load_slice, peak_memory_mib, prepare_slice_inputs, train, validate_config

__all__ = ["RunResult", "check_config", "load_slice", "peak_memory_mib", "prepare_slice_inputs", "train", "validate_config"]
