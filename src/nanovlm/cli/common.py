"""What every command shares: the one-line error parser, options typed by the dataclass fields they fill,
--set pairs, and the flags that mean the same everywhere (--overwrite, --json, --quiet, --device)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from ..config import ConfigError, field_types, parse_value


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is ONE `error:` line (and a hint to --help), exit status 2."""

    def error(self, message: str):
        sys.stderr.write(f"error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def add_command(sub, name: str, help: str, description: str | None = None) -> ArgumentParser:
    return sub.add_parser(name, help=help, description=description or help, formatter_class=HelpFormatter)


def field_type(cls, name: str, flag: str):
    """An argparse `type=` that parses the text as the dataclass field's type (one parser for CLI and --set)."""
    kind = field_types(cls)[name]

    def parse(text: str):
        try:
            return parse_value(kind, text, flag)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = name       # argparse names the type in some messages
    return parse


def field_default(cls, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_option(parser, cls, name: str, help: str, flag: str | None = None, **kwargs):
    """--flag for the dataclass field `name`: typed by the field, its default shown in --help. The parsed
    value is None when the flag is not given, so that a --set of the same field can be told apart."""
    flag = flag or "--" + name.replace("_", "-")
    default = field_default(cls, name)
    shown = "off" if default is None else default
    parser.add_argument(flag, dest=name, type=field_type(cls, name, flag), default=None,
                        help=f"{help} (default: {shown})", **kwargs)


def given_fields(args, names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def add_set_option(parser, what: str):
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help=f"{what}; repeatable. Values are parsed by the option's type: numbers, true/false, "
                             "lists as a,b or [\"a\",\"b\"]")


def parse_set_pairs(pairs: list[str]) -> dict[str, str]:
    """--set key=value pairs -> {key: "value"}; the value stays text until its field's type parses it."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. decoder.n_layer=4), got {pair!r}")
        if key in options and options[key] != value:
            raise ConfigError(f"--set {key} given twice ({options[key]!r} and {value!r})")
        options[key] = value
    return options


def merge_flags(options: dict, flags: dict) -> dict:
    """Options from --set plus those given as their own flags; the same option given both ways must agree."""
    for key, value in flags.items():
        if key in options:
            raise ConfigError(f"{key} is given twice: as --{key.replace('_', '-')} {value} and as --set "
                              f"{key}={options[key]}; keep one")
    return {**options, **flags}


def add_overwrite(parser, what: str):
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} if it exists")


def add_json(parser):
    parser.add_argument("--json", action="store_true", help="print a machine-readable JSON summary on stdout")


def print_json(obj):
    print(json.dumps(obj, indent=1, default=str))
