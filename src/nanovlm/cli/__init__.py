"""The `nanovlm` command: a thin shell that parses arguments and calls the library.

One module per command group; each has `register(sub, groups)` adding its subcommands to the top-level
subparsers `sub` or to a group (`groups["data"]`, `groups["eval"]`). To add a command, write a module here and
name it in COMMAND_MODULES.

Every error a user can cause (bad file, unknown preset, broken dataset, a value out of range) is printed as one
`error: ...` line with exit status 2; a traceback means a bug in nanovlm."""
from __future__ import annotations

import importlib
import sys

from .common import ArgumentParser, HelpFormatter

# evaluate comes last: it adds a generic `eval TASK` for every registered scorer no module gave its own command
COMMAND_MODULES = ["info", "data", "train", "build", "generate", "bench", "documents", "vqa", "serve", "paper", "convert", "evaluate"]
GROUPS = {"data": "make or import datasets", "eval": "evaluate a model on a task"}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("nanovlm")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="nanovlm", formatter_class=HelpFormatter,
                            description="Build, train, evaluate and serve small vision-language models.")
    parser.add_argument("--version", action="version", version=f"nanovlm {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {}
    for name, help in GROUPS.items():
        group = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        groups[name] = group.add_subparsers(dest=f"{name}_command", required=True, metavar="TASK" if name == "eval"
                                            else "SOURCE")
    for module in COMMAND_MODULES:
        try:
            importlib.import_module(f".{module}", __name__).register(sub, groups)
        except ModuleNotFoundError as e:       # an optional extra (fastapi, openai, ...) is not installed
            add_unavailable(sub, module, e.name)
    return parser


def add_unavailable(sub, command: str, missing: str):
    """A command whose optional dependencies are missing still shows in --help and says how to get them."""
    from ..config import ConfigError

    def fail(args):
        raise ConfigError(f"`nanovlm {command}` needs the Python package {missing!r}, which is not installed: "
                          f"pip install 'nanovlm[serve,paper,data]'")

    p = sub.add_parser(command, help=f"(unavailable: {missing} is not installed)", add_help=False)
    p.add_argument("rest", nargs="*")
    p.set_defaults(func=fail)


def main(argv: list[str] | None = None) -> int:
    from ..errors import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except USER_ERRORS as e:
        message = " ".join(str(e).split())          # one line, whatever the library wrote
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
