"""Names in configs -> code: objectives and models (conventions: "names in configs, not import paths").

``build_objective("mean_teacher", model, {"consistency_weight": 0.2})`` and ``build_model("unet",
num_classes=4)``; an unknown name or key is a one-line :class:`methods.errors.ConfigError` listing the valid ones. MONA, ARCO and ACTION
and the ISD pretraining objective are registered here too.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from methods.action import ActionObjective
from methods.arco import ArcoObjective
from methods.errors import ConfigError
from methods.isd_pretrain import ISDPretrainObjective
from methods.mean_teacher import MeanTeacherObjective
from methods.mona import MonaObjective
from methods.objective import Objective, config_from_dict
from methods.supervised import SupervisedObjective
from methods.unet import UNet

OBJECTIVES: dict[str, type[Objective]] = {
    "supervised": SupervisedObjective,
    "mean_teacher": MeanTeacherObjective,
    "isd_pretrain": ISDPretrainObjective,
    "mona": MonaObjective,
    "arco": ArcoObjective,
    "action": ActionObjective,
}

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
}


def _lookup(kind: str, table: dict[str, Any], name: str) -> Any:
    if name not in table:
        raise ConfigError(f"{kind} {name!r}: unknown {kind} (known {kind}s: {sorted(table)})")
    return table[name]


def objective_config(name: str, config_dict: dict[str, Any] | None = None) -> Any:
    """The validated, frozen config of objective ``name`` (no model needed: validate before Ray starts)."""
    return config_from_dict(_lookup("objective", OBJECTIVES, name).config_class, config_dict)


def build_objective(name: str, model: nn.Module, config_dict: dict[str, Any] | None = None) -> Objective:
    """Objective ``name`` around the student ``model``, configured by ``config_dict`` (missing keys take
    the config class's defaults)."""
    cls = _lookup("objective", OBJECTIVES, name)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"objective {name!r}: the student model must be a torch.nn.Module (e.g. build_model('unet', ...)), "
                          f"got {type(model).__name__}")
    return cls(model, config_from_dict(cls.config_class, config_dict))


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Model ``name`` built with ``kwargs``; unknown keyword arguments raise a :class:`ConfigError` listing the valid ones."""
    factory = _lookup("model", MODELS, name)
    valid = [p for p in inspect.signature(factory).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ConfigError(f"model {name!r}: unknown arguments {unknown} (valid arguments: {valid})")
    return factory(**kwargs)
