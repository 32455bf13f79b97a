"""``medseg evaluate``: score a folder of predicted volumes against ground truth (docs/evaluation.md,
'Evaluating outside a study').

Imports nothing heavy at module level (no torch, no medpy); the work is in :mod:`.scoring`.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the folder under ``--pred`` that ``medseg evaluate`` writes to without ``--out``
EVALUATION_DIR = "evaluation"
#: Ground-truth label files are ``<case>_gt`` unless ``--label-suffix`` says otherwise: ``medseg data convert-nifti``'s
#: default, ``medseg predict --images``'s and the released ``test_2D.py``'s naming.
LABEL_SUFFIX = "_gt"
#: Prediction files may be named ``<case>_pred`` (the released ``test_2D.py``'s naming): the suffix is not part of the case.
PREDICTION_SUFFIX = "_pred"


def label_suffix(text: str) -> str:
    """``--label-suffix``'s argparse type (``medseg evaluate``, ``medseg predict``): the ending of the label files' names."""
    import argparse

    if not text.strip():
        raise argparse.ArgumentTypeError("give the ending of the label files' names, e.g. _seg")
    if "/" in text or "\\" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: the ending of a file name, not a path (e.g. _seg)")
    return text


def add_cli(subparsers) -> None:
    from medseg_platform.cli import command_parser

    parser = command_parser(
        subparsers,
        "evaluate",
        help="per-case, per-class Dice/Jaccard/HD95/ASD of predicted volumes against ground truth",
        example="medseg evaluate --pred runs/mona/predictions --gt data/acdc --num-classes 4 --spacing-from none",
        description=(
            "Per-case, per-class Dice, Jaccard, HD95 and ASD (directed, prediction to ground truth, as medpy.asd) of\n"
            "predicted label volumes against ground truth. Predictions: .h5 (dataset 'pred' or 'label') or .nii/.nii.gz\n"
            "files; a '_pred' suffix is removed and '*_gt'/'*_img' files are ignored (the released test_2D.py output\n"
            "folder works as is). Ground truth: such a folder ('_gt' suffix removed, or --label-suffix's; beside a\n"
            "'_gt' file, an unsuffixed one is its image, as in a convert-nifti raw folder; a folder without label files\n"
            "reads the '_gt' files of its subfolders, as the raw ACDC release's training/patientNNN/) or an SSL4MIS\n"
            "dataset root (root/data/<case>.h5; a warning when the predicted cases are not its test or val split\n"
            "alone). Writes per_case.csv, summary.csv and summary.json."
        ),
    )
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted label volumes")
    parser.add_argument("--gt", required=True, metavar="DIR", help="ground-truth folder or SSL4MIS dataset root")
    parser.add_argument("--num-classes", type=int, default=None, metavar="K",
                        help="classes including background (default: the count the --gt dataset root's manifest records, "
                             "which a --gt root requires, else the --pred folder's prediction.json (medseg predict's), "
                             "else 4: ACDC)")
    parser.add_argument("--spacing-from", choices=("gt", "none"), default="gt",
                        help="distances in mm using the ground truth's spacing (gt, default; voxels where it has none) "
                             "or in voxels (none, as the released code and papers)")
    parser.add_argument("--metric-backend", choices=("ours", "medpy"), default="ours",
                        help="ours (default, bounding-box crops, same values) or medpy's functions directly")
    parser.add_argument("--empty-policy", choices=("nan", "released"), default="nan",
                        help="nan (default): undefined metrics are NaN, excluded and counted; released: the released "
                             "code's (1,1,0,0) / (0,0,0,0) for empty masks")
    parser.add_argument("--label-suffix", default=LABEL_SUFFIX, metavar="SUFFIX", type=label_suffix,
                        help=f"in a ground-truth folder, label files are named <case>SUFFIX (default {LABEL_SUFFIX}, as "
                             "convert-nifti's and predict's; e.g. _seg)")
    parser.add_argument("--out", metavar="DIR", default=None, help="output folder (default: <pred>/evaluation)")
    parser.add_argument("--quiet", action="store_true", help="no per-case progress lines")
    parser.set_defaults(func=run)


def _prediction_record(pred: Path) -> dict:
    """A ``medseg predict`` folder's ``prediction.json`` ({} when there is none or it cannot be read)."""
    import json

    try:
        record = json.loads((pred / "prediction.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def predicted_num_classes(pred: Path) -> int | None:
    """The class count a ``medseg predict`` folder's ``prediction.json`` records (the trial's), else None."""
    value = _prediction_record(pred).get("num_classes")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 2 else None


def recorded_class_names(gt: Path, pred: Path, num_classes: int) -> dict[int, str]:
    """Label -> name for the printed table, from what the data record: the ground-truth dataset's manifest
    (``class_names``), else the ``medseg predict`` folder's ``prediction.json`` (the trial's); {} when neither names
    ``num_classes - 1`` classes (the table then shows the labels; ACDC's names are never assumed)."""
    from medseg_platform.data.layout import read_manifest
    from medseg_platform.evaluation.scoring import is_dataset_root

    for names in (read_manifest(gt).get("class_names") if is_dataset_root(gt) else None, _prediction_record(pred).get("class_names")):
        if isinstance(names, list) and len(names) == num_classes - 1 and all(isinstance(n, str) for n in names):
            return dict(enumerate(names, start=1))
    return {}


def check_class_names_agree(gt: Path, pred: Path) -> None:
    """A one-line :class:`DataError` when the ground-truth dataset root's manifest and the ``medseg predict`` folder's
    ``prediction.json`` (the trial's) name different classes: the labels would mean other structures (the table
    printed a trial's Liver score as Aorta, unwarned, where ``medseg predict`` and a study's ``--test-root`` refuse the
    same pair: the own-data review). Nothing to compare when either does not record names."""
    from medseg_platform.data.layout import read_manifest
    from medseg_platform.errors import DataError
    from medseg_platform.evaluation.scoring import is_dataset_root

    ours = read_manifest(gt).get("class_names") if is_dataset_root(gt) else None
    theirs = _prediction_record(pred).get("class_names")
    if not (isinstance(ours, list) and isinstance(theirs, list)):
        return
    ours, theirs = [str(n).strip() for n in ours], [str(n).strip() for n in theirs]  # as training reads the names
    if ours != theirs:
        raise DataError(f"--gt {gt}: class names {', '.join(ours)} differ from {', '.join(theirs)} of the "
                        f"predictions ({pred / 'prediction.json'}, the trial's) (labels must mean the same classes; if only "
                        "the names differ, convert the dataset again with --class-names)")


def unfinished_prediction(pred: Path) -> str:
    """A warning when the ``medseg predict`` run that wrote the folder did not finish (its ``prediction.json`` says
    ``complete`` false): some files may then be an earlier run's, of another trial even. "" otherwise (older folders
    have no such key)."""
    if _prediction_record(pred).get("complete") is not False:
        return ""
    return (f"{pred / 'prediction.json'}: the medseg predict run that wrote this folder did not finish, so some of its files "
            "may be an earlier run's; rerun that medseg predict command before trusting these numbers")


def run(args) -> int:
    from medseg_platform.evaluation import scoring

    def progress(i: int, n: int, case: str) -> None:
        print(f"[{i}/{n}] {case}", file=sys.stderr, flush=True)

    from medseg_platform.io import check_output_folder

    from medseg_platform.data.check import manifest_num_classes

    # a dataset root knows its classes: scoring a 3-class dataset as 4 adds an empty class
    recorded = manifest_num_classes(args.gt) if scoring.is_dataset_root(Path(args.gt).expanduser()) else None
    num_classes = args.num_classes
    if num_classes is None:
        num_classes = recorded or predicted_num_classes(Path(args.pred).expanduser()) or 4
    elif recorded is not None and num_classes != recorded:  # more added always-empty classes to the table (the walkthrough)
        from medseg_platform.errors import ConfigError

        raise ConfigError(f"--num-classes {num_classes}: the dataset root {args.gt} records {recorded} classes, background "
                          f"included (its manifest.json); drop --num-classes or give {recorded}")
    out = Path(args.out) if args.out else Path(args.pred) / EVALUATION_DIR
    if Path(args.pred).is_dir():  # a missing or wrong --pred gets evaluate_folder's own message
        check_output_folder(out, "--out" if args.out else "--out (default <pred>/evaluation)")
        if Path(args.gt).expanduser().is_dir():
            check_class_names_agree(Path(args.gt).expanduser(), Path(args.pred).expanduser())
    names = recorded_class_names(Path(args.gt).expanduser(), Path(args.pred).expanduser(), num_classes)
    result = scoring.evaluate_folder(
        args.pred,
        args.gt,
        num_classes=num_classes,
        spacing_from=args.spacing_from,
        backend=args.metric_backend,
        empty_policy=args.empty_policy,
        progress=None if args.quiet else progress,
        label_suffix=args.label_suffix,
        class_names=names,
    )
    for warning in [*result.warnings, *filter(None, [unfinished_prediction(Path(args.pred).expanduser())])]:
        print(f"warning: {warning}", file=sys.stderr)
    paths = scoring.write_results(result, out)
    n_cases = result.summary["num_cases"]
    print(f"{n_cases} cases, {num_classes - 1} foreground classes, distances in {result.units}, "
          f"empty policy {args.empty_policy}, backend {args.metric_backend} ({result.seconds:.2f} s)")
    print(scoring.format_table(result, names))
    for path in paths.values():
        print(f"wrote {path}")
    return 0
