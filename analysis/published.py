"""Published ACDC results of the MONA, ARCO and ACTION papers: numbers to put beside a ``paper``-profile run.

Each :class:`PublishedTable` is one table of one paper: the mean foreground Dice (%, "Avg" over RV, Myo
and LV) per row and label fraction. Rows carry the platform's table labels
(:data:`medseg_platform.recipes.METHOD_LABELS` and the study scripts' rows); columns are the label
fraction as ``data.labelled`` writes it: 1, 3 and 7 of ACDC's 70 training patients are the papers' "1%",
"5%" and "10%"; "100%" is full supervision. The papers' names for the rows:

* ARCO's "UNet-L" (a UNet trained on the labelled patients only) = "Supervised only"; "UNet-F" (all
  labels) = "Supervised, all labels"; "MT" = "Mean teacher"; "ARCO-NS" (uniform sampling) = "MONA";
* ARCO Table 2's "w/o tailness" (no ``L_contrast``; the same 60.9 for NS, SG and SAG) = "MONA/ARCO w/o
  L_contrast"; ACTION's "w/o L_anco" = "ACTION w/o L_anco";
* ARCO Table 3's rows without one loss term = "ARCO-SG w/o L_unsup" and the like
  (:func:`medseg_platform.recipes.without_term_label`).

MONA's own paper (arXiv 2209.13476) is not quoted: MONA's numbers here are MONA as a baseline in ARCO's
tables. The ACTION paper's numbers were taken from a secondary summary and are marked unverified.

:func:`published_difference` gives the published A - B of two rows from one table (never across tables:
different tables are different training runs). One stated exception: :data:`ARCO_TABLE_3` holds the full ARCO rows of
Tables 1-2, the reference its ablated rows are read against. Only numbers are copied here; see ``docs/analysis.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from medseg_platform.recipes import FULL_SUPERVISION_LABEL, METHOD_LABELS, WITHOUT_CONTRAST_LABELS, without_term_label


@dataclass(frozen=True)
class PublishedTable:
    """One paper table: ``source`` (short, in the claims' Published Δ column), ``citation`` (where exactly, in the
    claims' caption) and
    ``dice``: row label -> {label fraction (``data.labelled``) -> mean foreground Dice in %}."""

    source: str
    citation: str
    dice: Mapping[str, Mapping[str, float]]


ARCO = "ARCO (You et al., NeurIPS 2023, arXiv 2302.01735v5)"

ARCO_TABLE_1 = PublishedTable(
    "ARCO Table 1", f"{ARCO}, Table 1: ACDC, DSC Avg; columns 1% / 5% / 10% labelled = 1 / 3 / 7 patients",
    {
        FULL_SUPERVISION_LABEL: {"100%": 91.5},
        METHOD_LABELS["supervised"]: {"1": 40.3, "3": 51.7, "7": 79.5},
        METHOD_LABELS["mean_teacher"]: {"1": 42.9, "3": 58.3, "7": 80.1},
        METHOD_LABELS["action"]: {"1": 81.0, "3": 86.6, "7": 87.2},
        METHOD_LABELS["mona"]: {"1": 82.6, "3": 86.9, "7": 87.7},
        METHOD_LABELS["arco_sag"]: {"1": 84.9, "3": 87.1, "7": 88.5},
        METHOD_LABELS["arco_sg"]: {"1": 85.5, "3": 88.7, "7": 89.4},
    },
)

ARCO_TABLE_2 = PublishedTable(
    "ARCO Table 2", f"{ARCO}, Table 2: component ablation on ACDC at 1 labelled patient, DSC Avg",
    {
        METHOD_LABELS["mona"]: {"1": 82.6},
        METHOD_LABELS["arco_sg"]: {"1": 85.5},
        METHOD_LABELS["arco_sag"]: {"1": 84.9},
        WITHOUT_CONTRAST_LABELS["mona"]: {"1": 60.9},
    },
)

ARCO_TABLE_3 = PublishedTable(
    "ARCO Table 3", f"{ARCO}, Table 3: loss ablation on ACDC at 1 labelled patient, DSC Avg; the full rows are the "
    "85.5 / 84.9 of Tables 1-2, which the ablated rows are read against",
    {
        METHOD_LABELS["arco_sg"]: {"1": 85.5},
        without_term_label("arco_sg", "L_unsup"): {"1": 81.9},
        without_term_label("arco_sg", "L_global_inst"): {"1": 84.1},
        without_term_label("arco_sg", "L_local_inst"): {"1": 83.8},
        METHOD_LABELS["arco_sag"]: {"1": 84.9},
        without_term_label("arco_sag", "L_unsup"): {"1": 81.2},
        without_term_label("arco_sag", "L_global_inst"): {"1": 84.0},
        without_term_label("arco_sag", "L_local_inst"): {"1": 83.3},
    },
)

ACTION_PAPER = PublishedTable(
    "ACTION paper (unverified)",
    "ACTION (You et al., IPMI 2023, arXiv 2206.02307): ACDC results and ablation at 3 labelled patients, DSC Avg, "
    "quoted from a secondary summary, not checked against the paper",
    {
        METHOD_LABELS["action"]: {"3": 87.5, "7": 89.7},
        WITHOUT_CONTRAST_LABELS["action"]: {"3": 86.5},
    },
)

#: The ACDC tables, in the order :func:`published_difference` looks in.
ACDC_TABLES = (ARCO_TABLE_1, ARCO_TABLE_2, ARCO_TABLE_3, ACTION_PAPER)


@dataclass(frozen=True)
class PublishedDifference:
    """A published A - B in Dice points and the table it comes from."""

    difference: float
    table: PublishedTable


def published_difference(a: str, b: str, column: str, b_column: str | None = None,
                         tables: tuple[PublishedTable, ...] = ACDC_TABLES) -> PublishedDifference | None:
    """Published Dice of row ``a`` at ``column`` minus row ``b`` at ``b_column`` (default ``column``), from the
    first table that has both; None when no single table has both. A column may be spelled as the papers name it
    ("5%": the 3 of ACDC's 70 training patients, :func:`published_column`)."""
    b_column = published_column(column if b_column is None else b_column)
    column = published_column(column)
    for table in tables:
        value_a = table.dice.get(a, {}).get(column)
        value_b = table.dice.get(b, {}).get(b_column)
        if value_a is not None and value_b is not None:
            return PublishedDifference(round(value_a - value_b, 6), table)
    return None


def published_column(column: str) -> str:
    """A label fraction as the tables' columns spell it: a percent as the patients it selects of ACDC's 70 training
    patients (the papers' "1%", "5%" and "10%" are 1, 3 and 7; "4%" is 3 too); "100%" and patient counts as given."""
    from medseg_platform.data.splits import PUBLISHED_TRAIN_PATIENTS, canonical_fraction, resolve_patient_count

    try:
        text = canonical_fraction(column)
        if text.endswith("%") and text != "100%":
            return str(resolve_patient_count(text, PUBLISHED_TRAIN_PATIENTS).patients)
    except ValueError:
        return column
    return text
