"""nanovlm data documents | extract   (`nanovlm eval fields` comes from the scorer registry)"""
from __future__ import annotations

from .common import add_command, add_json, add_overwrite, print_json


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",")]


def register(sub, groups):
    from ..data.documents import DEFAULT_SIZE, KINDS, LAYOUTS, STYLES

    p = add_command(groups["data"], "documents", "synthetic KYC forms, trade confirmations and account statements "
                    "with field values, boxes and anomalies as ground truth")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--kind", default=",".join(KINDS), help=f"document kind(s), comma-separated: {', '.join(KINDS)}")
    p.add_argument("--n", type=int, default=1000, help="number of documents (kinds taken in turn)")
    p.add_argument("--layouts", default=",".join(LAYOUTS),
                   help=f"layouts to draw from, comma-separated: {', '.join(LAYOUTS)} (hold one out to test "
                        "generalisation)")
    p.add_argument("--style", default="fields", help=f"record style(s), comma-separated: {', '.join(STYLES)}; "
                   "several styles give one record per style and document, sharing the image")
    p.add_argument("--split", choices=["train", "val", "test"], help="put every record in this split (e.g. test "
                   "for a held-out set; default: 80/10/10 by document)")
    p.add_argument("--width", type=int, default=DEFAULT_SIZE[0], help="page width in pixels")
    p.add_argument("--height", type=int, default=DEFAULT_SIZE[1], help="page height in pixels")
    p.add_argument("--scan", type=float, default=1.0, help="strength of the scan artefacts, 0 (clean) to 1")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overwrite(p, "an existing dataset in OUT")
    add_json(p)
    p.set_defaults(func=run_documents)

    p = add_command(sub, "extract", "read fields from a document image as JSON, with the model's confidence")
    p.add_argument("--model", required=True, help="model folder (or Hub repo id), trained on documents")
    p.add_argument("--image", required=True, help="document image (PNG or JPEG)")
    p.add_argument("--fields", required=True, help="comma-separated field names, e.g. name,pan,date_of_birth")
    p.add_argument("--max-new-tokens", type=int, help="most tokens to generate (default: 40 per field)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.set_defaults(func=run_extract)


def run_documents(args):
    from ..data.documents import make_documents

    stats = make_documents(args.out, kinds=_names(args.kind), n=args.n, styles=_names(args.style),
                           layouts=_names(args.layouts), seed=args.seed, width=args.width, height=args.height,
                           split=args.split, scan_strength=args.scan, overwrite=args.overwrite,
                           progress=not args.quiet)
    if args.json:
        print_json(stats)
    else:
        print(f"wrote {stats['n']} documents ({stats['records']} records) to {args.out} "
              f"({stats['documents_per_s']:.0f} documents/s); splits {stats['splits']}")


def _load(model_dir: str, device: str):
    from ..hub import resolve_model_dir
    from ..model.vlm import VisionLanguageModel

    return VisionLanguageModel.from_pretrained(resolve_model_dir(model_dir), device=device)


def run_extract(args):
    from ..extract import extract_fields, parse_field_names
    from ..predict import open_image

    fields = parse_field_names(args.fields)
    image = open_image(args.image)          # a bad image fails before the model loads
    print_json(extract_fields(_load(args.model, args.device), image, fields, max_new_tokens=args.max_new_tokens))
