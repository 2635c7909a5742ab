"""Every model the planner can be asked about: a preset by name, or any Hugging Face config.json.

``get_model`` is what the ``--model`` arguments of ``disagg plan``, ``disagg sim`` and the
calibration bench resolve through.  It sits above both sources -- the presets
(:mod:`disagg.planner.models`) and the config parser (:mod:`disagg.planner.hf_config`, which
builds on ``models``) -- so neither has to import the other's caller: that was a cycle while
``get_model`` lived in ``models``.
"""

from __future__ import annotations

from pathlib import Path

from disagg.planner.errors import UnknownPresetError
from disagg.planner.hf_config import model_from_config_file
from disagg.planner.models import DEFAULT_MODEL, MODELS, ModelSpec, preset_for_model_name


def get_model(name_or_path: str = DEFAULT_MODEL) -> ModelSpec:
    """A preset by name (case-insensitive), or the model described by a Hugging Face
    ``config.json`` (a path to the file, or to a folder holding one).

    Raises :class:`UnknownPresetError` listing the presets when the name is neither.
    """
    preset = preset_for_model_name(name_or_path)
    if preset is not None and not Path(name_or_path).exists():
        return MODELS[preset]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.is_file():
        return model_from_config_file(path)
    known = ", ".join(sorted(MODELS))
    raise UnknownPresetError(
        f"unknown model {name_or_path!r}; known models: {known} "
        "(or give the path of a Hugging Face config.json)"
    )
