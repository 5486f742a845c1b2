"""nanovlm data scenes | shapes | coco"""
from __future__ import annotations

from .common import add_command, add_overwrite


def register(sub, groups):
    data = groups["data"]
    p = add_command(data, "scenes", "procedurally drawn scenes with child-language descriptions or Q&A")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--n", type=int, default=10000, help="number of scenes")
    p.add_argument("--style", choices=["short", "long", "vqa"], default="short",
                   help="short (20-25 words), long (60-70 words) descriptions, or vqa question-answer pairs")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--questions", metavar="N|MIN-MAX", help="vqa only: questions per scene, a number or a range "
                   "up to 16 (default: 4-6); more questions share each picture's image tokens in training")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    add_overwrite(p, "an existing dataset in OUT")
    p.set_defaults(func=run_scenes)

    p = add_command(data, "shapes", "the shapes diagnostic: single-colour shapes where only form tells them apart",
                    "Pictures of 1-3 single-colour shapes (geometric figures and sprite silhouettes) on a plain "
                    "background, any colour, size, place and rotation, with questions about shape, colour, count "
                    "and relations. Test pictures also show colour-shape combinations that training never shows. "
                    "Score a model with `nanovlm eval shapes`.")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--n", type=int, default=20000, help="number of pictures")
    p.add_argument("--image-size", type=int, default=64, help="image side in pixels")
    p.add_argument("--shapes", default="all", help="all, geometric, silhouettes, or a comma-separated list of "
                   "shape names")
    p.add_argument("--objects", default="1-3", help="things per picture: a number or a range (1, 2-3, ...); "
                   "with --questions it isolates one skill: --objects 1 --questions shape is plain shape naming")
    p.add_argument("--questions", default="all", help="question kinds to ask: all, or a comma-separated list of "
                   "shape, color, count, relation")
    p.add_argument("--per-thing", default="one", help="questions about each thing: one (its shape or its colour, "
                   "drawn at random), both (its shape and its colour in the same conversation: twice the answers "
                   "per picture, but the first of a thing's two questions names the second's answer, which can "
                   "then be copied instead of read from the picture) or apart (its shape and its colour, in two "
                   "conversations about the picture that never name each other's answers)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    add_overwrite(p, "an existing dataset in OUT")
    p.set_defaults(func=run_shapes)

    p = add_command(data, "coco", "import COCO captions (captions_*.json + image folder)")
    p.add_argument("--annotations", required=True, help="COCO captions JSON, e.g. captions_train2017.json")
    p.add_argument("--images", required=True, help="folder holding the COCO images")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--seed", type=int, default=0, help="random seed of the split")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of non-test images for validation")
    p.add_argument("--test-size", type=int, default=500, help="images held out for testing")
    p.add_argument("--symlink", action="store_true", help="symlink images instead of copying them")
    p.add_argument("--skip-missing", action="store_true", help="skip (with a warning) images missing on disk "
                   "instead of stopping")
    add_overwrite(p, "an existing dataset in OUT")
    p.set_defaults(func=run_coco)


def run_scenes(args):
    from ..data.synth import make_scenes

    stats = make_scenes(args.out, n=args.n, style=args.style, image_size=args.image_size, seed=args.seed,
                        overwrite=args.overwrite, questions=args.questions)
    print(f"wrote {stats['n']} scenes to {args.out} ({stats['images_per_s']:.0f} images/s)")


def run_shapes(args):
    from ..data.shapes import make_shapes

    stats = make_shapes(args.out, n=args.n, image_size=args.image_size, seed=args.seed, shapes=args.shapes,
                        overwrite=args.overwrite, objects=args.objects, questions=args.questions,
                        per_thing=args.per_thing)
    print(f"wrote {stats['n']} pictures to {args.out} ({stats['images_per_s']:.0f} images/s, splits "
          f"{stats['splits']}); held out of training: {', '.join(stats['heldout_combinations'])}")


def run_coco(args):
    from ..data.coco import import_coco

    stats = import_coco(args.annotations, args.images, args.out, seed=args.seed, val_fraction=args.val_fraction,
                        test_size=args.test_size, image_mode="symlink" if args.symlink else "copy",
                        missing_images="skip" if args.skip_missing else "error", overwrite=args.overwrite)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
