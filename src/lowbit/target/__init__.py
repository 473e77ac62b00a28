"""Hardware/runtime targets: which tensors a runtime quantizes, and how (AIMET quantsim-config format)."""

from lowbit.target.load import load_target, preset_names
from lowbit.target.rules import OpRule, ParamRule, TensorRule
from lowbit.target.target import PASSTHROUGH_OPS, Target

__all__ = ["PASSTHROUGH_OPS", "OpRule", "ParamRule", "Target", "TensorRule", "load_target", "preset_names"]
