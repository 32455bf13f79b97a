"""The evaluation protocol of a study (``--protocol``; docs/evaluation.md, 'Released evaluation protocol').

``corrected`` (default) changes nothing; ``released`` makes every trial evaluate as the released scripts do, so that
a table compares like for like with a published one: the final iteration's weights (``eval.selection=final``), an
empty prediction scored as distance 0 (``eval.empty_policy=released``), HD95/ASD in voxels
(``eval.distance_units=voxel``) and, on the SSL4MIS ACDC list, the released labelled slices
(``data.labelled_strategy=released_slices``: 23 slices for "1 patient", part of patient099, where ``corrected``
keeps the default whole patients, all 32 of its slices; docs/data.md, 'Labelled subsets'). Other datasets (the
phantom included) have no released slice counts (the released ``patients_to_slices`` knows only its own datasets'
lists), so there the labelled set stays whole patients and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medseg_platform.errors import ConfigError, MedsegError

#: ``--protocol`` choices: the platform's corrected evaluation (default) or the released scripts' (module docstring).
PROTOCOLS = ("corrected", "released")
#: What ``--protocol released`` sets on every dataset ...
RELEASED_EVALUATION = {"eval.selection": "final", "eval.empty_policy": "released", "eval.distance_units": "voxel"}
#: ... and in addition on the SSL4MIS ACDC list (:func:`medseg_platform.data.splits.has_released_slices`).
RELEASED_LABELLED = {"data.labelled_strategy": "released_slices"}


def protocol_overrides(protocol: str, root: str | Path) -> dict[str, Any]:
    """The dotted config overrides of ``--protocol`` for the dataset at ``root``: none for ``corrected``;
    :data:`RELEASED_EVALUATION`, plus :data:`RELEASED_LABELLED` when its ``train_slices.list`` is the SSL4MIS ACDC
    list, for ``released`` (which reads that list). An unknown protocol is a :class:`MedsegError`."""
    if protocol not in PROTOCOLS:
        raise MedsegError(f"--protocol {protocol!r}: unknown (choose {' or '.join(PROTOCOLS)})")
    if protocol == "corrected":
        return {}
    from medseg_platform.data.layout import AcdcLayout
    from medseg_platform.data.splits import has_released_slices

    released_list = has_released_slices(AcdcLayout(root).train_slices)
    return {**RELEASED_EVALUATION, **(RELEASED_LABELLED if released_list else {})}


def released_cut_warnings(root: str | Path, fractions) -> list[str]:
    """The warnings of :func:`medseg_platform.data.splits.released_cut_note` for the label ``fractions`` a study trains
    with ``released_slices`` on the dataset at ``root`` (a converted ACDC list orders a frame's slices otherwise than the
    release's, and the 1-patient cut ends inside a frame: the data review)."""
    from medseg_platform.data.layout import AcdcLayout, case_of_slice, patient_of_case
    from medseg_platform.data.splits import released_cut_note, resolve_patient_count

    slices = AcdcLayout(root).train_slices
    patients = len({patient_of_case(case_of_slice(s)) for s in slices})
    counts = sorted({resolve_patient_count(fraction, patients).patients for fraction in fractions})
    return [note for note in (released_cut_note(slices, count) for count in counts) if note]


def _dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A row's overrides as dotted leaf keys (``{"eval": {"selection": "final"}}`` -> ``eval.selection``)."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and key != "objective_params":
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def check_protocol(study, protocol: str, keys: Mapping[str, Any]) -> None:
    """A one-line :class:`ConfigError` when a row, a grid axis or a searched key of ``study`` (a
    :class:`~medseg_platform.study.Study`) sets a key of the protocol (``keys``, from :func:`protocol_overrides`) to
    another value: the row would silently leave the protocol."""
    for key, value in keys.items():
        if key in study.grid or key in (study.search_space or {}):
            raise ConfigError(f"--protocol {protocol}: study {study.name} varies {key}, which the protocol sets to {value!r} "
                              "(use --protocol corrected)")
        for variant in study.variants:
            row_value = _dotted(variant.overrides).get(key, value)
            if row_value != value:
                raise ConfigError(f"--protocol {protocol}: row {variant.tags.get('row') or '(unnamed row)'!r} sets {key} to "
                                  f"{row_value!r}, the protocol to {value!r} (leave the row out with --rows or use "
                                  "--protocol corrected)")
