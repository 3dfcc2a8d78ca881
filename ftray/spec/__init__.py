"""The typed job spec: one YAML file says what to fine-tune, how, and where.

Every field has a one-line description (the spec reference is generated from them), the YAML keys
are the Python field names, and unknown keys are errors. `load_spec` is the only way in: it reads
YAML safely, applies `--set key.path=value` overrides to the raw mapping and validates the result,
so an override goes through exactly the same checks as the file.

One module per section (model, data, train, scaling, run, tune), `job` for the whole spec and its
rules across sections, `load` for reading it; each method's own section (its config) lives beside
its code in `ftray.methods`. Every public name is importable from `ftray.spec`.
"""

from ftray.methods.attention.config import AttentionMethod
from ftray.methods.config import MethodConfig
from ftray.methods.distill.config import DistillMethod
from ftray.methods.full.config import FullMethod
from ftray.methods.incremental.config import IncrementalMethod
from ftray.methods.lora.config import LoraMethod, LoraParams
from ftray.methods.meta.config import MetaMethod
from ftray.methods.rl.config import RLMethod, RLStop
from ftray.methods.transfer.config import TransferMethod
from ftray.schema import SpecError, Strict, describe
from ftray.spec.data import TASK_METRICS, DataSpec
from ftray.spec.job import JobSpec, MethodSpec
from ftray.spec.load import (MAX_SPEC_BYTES, MAX_SPEC_DEPTH, PATH_KEYS, apply_overrides, format_validation_error,
                             load_spec, load_spec_and_raw, parse_override, parse_yaml, pin_paths, read_spec_file,
                             validate, with_absolute_paths)
from ftray.spec.model import (Activation, HFModel, ImageEncoder, MLPModel, Modality, ModelSpec, MultimodalModel,
                              TabularEncoder, TextEncoder)
from ftray.spec.run import RunSpec
from ftray.spec.scaling import ScalingSpec
from ftray.spec.serve import ServeSpec
from ftray.spec.train import SGD, Adam, AdamW, EarlyStopping, OptimizerBase, OptimizerSpec, RMSprop, Schedule, TrainSpec
from ftray.spec.tune import (PBT_MUTABLE, AshaScheduler, Distribution, EnsembleSpec, FifoScheduler, HyperbandScheduler,
                             MedianScheduler, PB2Scheduler, PBTScheduler, SchedulerSpec, TuneSpec)

__all__ = [
    "SpecError", "Strict", "describe",
    "Activation", "Modality", "MLPModel", "HFModel", "ImageEncoder", "TextEncoder", "TabularEncoder",
    "MultimodalModel", "ModelSpec",
    "DataSpec", "TASK_METRICS",
    "MethodConfig", "FullMethod", "TransferMethod", "LoraParams", "LoraMethod", "AttentionMethod",
    "DistillMethod", "IncrementalMethod", "MetaMethod", "RLStop", "RLMethod", "MethodSpec",
    "OptimizerBase", "SGD", "RMSprop", "Adam", "AdamW", "OptimizerSpec", "Schedule", "EarlyStopping",
    "TrainSpec", "ScalingSpec", "ServeSpec", "RunSpec",
    "Distribution", "FifoScheduler", "AshaScheduler", "MedianScheduler", "HyperbandScheduler",
    "PBT_MUTABLE", "PBTScheduler", "PB2Scheduler", "SchedulerSpec", "EnsembleSpec", "TuneSpec",
    "JobSpec",
    "MAX_SPEC_BYTES", "MAX_SPEC_DEPTH", "PATH_KEYS", "parse_yaml", "parse_override", "apply_overrides",
    "format_validation_error", "validate", "read_spec_file", "with_absolute_paths", "pin_paths",
    "load_spec", "load_spec_and_raw",
]
