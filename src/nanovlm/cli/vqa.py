"""nanovlm data cauldron | mmstar: the visual question answering imports."""
from __future__ import annotations

from .common import add_command, add_json, add_overwrite, print_json


def register(sub, groups):
    data = groups["data"]
    p = add_command(data, "cauldron", "import The Cauldron's parquet files (multi-image, multi-turn kept)",
                    "Convert The Cauldron (HuggingFaceM4/the_cauldron) parquet files into a dataset folder, one "
                    "record per row, streaming one row group at a time; every distinct image is written once.")
    p.add_argument("--parquet", required=True, nargs="+", metavar="FILE|DIR",
                   help="parquet files, folders of them, or one Hub name like HuggingFaceM4/the_cauldron:ai2d "
                        "(needs the datasets package and a network)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--name", help="record id prefix (default: the parquet folder's name, e.g. ai2d)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="share of records put in the val split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    add_overwrite(p, "an existing dataset in OUT")
    add_json(p)
    p.set_defaults(func=run_cauldron)

    p = add_command(data, "mmstar", "import MMStar's parquet (1,500 multiple-choice questions) for `nanovlm eval "
                    "mmstar`")
    p.add_argument("--parquet", required=True, nargs="+", metavar="FILE|DIR", help="MMStar parquet file(s)")
    p.add_argument("--out", required=True, help="dataset folder to write")
    add_overwrite(p, "an existing dataset in OUT")
    add_json(p)
    p.set_defaults(func=run_mmstar)


def run_cauldron(args):
    from ..data.cauldron import import_cauldron
    from ..data.format import DatasetFormatError

    if not 0.0 <= args.val_fraction < 1.0:
        raise DatasetFormatError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    stats = import_cauldron(args.parquet, args.out, name=args.name, seed=args.seed, val_fraction=args.val_fraction,
                            overwrite=args.overwrite, progress=not args.json)
    if args.json:
        print_json(stats)
    else:
        print(f"wrote {stats['records']} records from {stats['rows']} rows to {args.out} "
              f"({stats['images_written']} images, {stats['skipped']} rows without answers skipped, "
              f"peak memory {stats['peak_rss_mb']:.0f} MB)")


def run_mmstar(args):
    from ..data.mmstar import import_mmstar

    stats = import_mmstar(args.parquet, args.out, overwrite=args.overwrite, progress=not args.json)
    if args.json:
        print_json(stats)
    else:
        print(f"wrote {stats['records']} questions to {args.out}; score a model with "
              f"`nanovlm eval mmstar --model MODEL --data {args.out}`")
