"""Command-line plumbing every script shares: argument parsing without abbreviations, and expected errors as one line.

transformers is imported only when a parser for its dataclasses is built (argument_parser): `lymphus.py`, a dataset
tool, reads its plain options with PlainArgumentParser and never loads the ML stack (about a second of start-up).

An expected error (bad input, bad argument, a missing file, a checksum mismatch, a Hub refusal) is printed as one
message naming what is at fault, with a non-zero exit and no traceback. `--debug` on the command line, or
`LYMPHUS_DEBUG=1` in the environment, shows the traceback instead.
"""

import argparse
import dataclasses
import json
import os
import sys
import types
import typing


DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT_VARIABLE = "LYMPHUS_DEBUG"


def argument_parser(dataclass_types, **kwargs):
    """HfArgumentParser that refuses abbreviated options: `--hub_tok` must never stand for `--hub_token`."""
    from transformers import HfArgumentParser  # here, not at module level: see the module docstring

    return HfArgumentParser(dataclass_types, allow_abbrev=False, **kwargs)


def string_to_bool(value):
    """A boolean option's value, spelt as HfArgumentParser accepts it."""
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(
        f"Truthy value expected: got {value} but expected one of yes/no, true/false, t/f, y/n, 1/0 (case insensitive)."
    )


class PlainArgumentParser(argparse.ArgumentParser):
    """HfArgumentParser's reading of plain dataclasses (str, int, float, bool, Optional of those, `choices` in the
    metadata), with argparse alone, for scripts that must not load transformers to read their options.

    The same options as HfArgumentParser: `--a_b` and `--a-b`, a bool flag alone meaning True (or taking yes/no),
    defaults shown in --help; abbreviations refused. Any other field type is refused: use argument_parser for it.
    """

    def __init__(self, dataclass_types, **kwargs):
        super().__init__(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter, **kwargs)
        self.dataclass_types = list(dataclass_types)
        for dataclass_type in self.dataclass_types:
            hints = typing.get_type_hints(dataclass_type)
            for field in dataclasses.fields(dataclass_type):
                if field.init:
                    self.add_field(field, hints[field.name])

    def add_field(self, field, hint):
        options = [f"--{field.name}"] + ([f"--{field.name.replace('_', '-')}"] if "_" in field.name else [])
        members = typing.get_args(hint)
        is_optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in members
        kind = next((member for member in members if member is not type(None)), None) if is_optional else hint
        plain = kind in (str, int, float, bool) and not (is_optional and len(members) != 2)
        if not plain or (kind is bool and (is_optional or field.default is True)):  # HfArgumentParser adds --no_*
            raise TypeError(f"--{field.name}: {hint} = {field.default} is not a plain option; use argument_parser.")
        settings = dict(field.metadata, type=string_to_bool if kind is bool else kind)
        if kind is bool:
            default = False if field.default is dataclasses.MISSING else field.default
            settings.update(default=default, nargs="?", const=True)
        elif field.default is not dataclasses.MISSING:
            settings["default"] = field.default
        else:
            settings["required"] = True
        self.add_argument(*options, **settings)

    def parse_args_into_dataclasses(self, args=None, return_remaining_strings=False):
        namespace, remaining = self.parse_known_args(args=args)
        parsed = tuple(self.instances(vars(namespace)))
        if remaining and not return_remaining_strings:
            raise ValueError(f"Unknown option(s) {remaining}")
        return (*parsed, remaining) if return_remaining_strings else parsed

    def parse_json_file(self, json_file):
        with open(json_file, encoding="utf-8") as file:
            values = json.load(file)
        names = {name for dataclass_type in self.dataclass_types for name in init_field_names(dataclass_type)}
        if not isinstance(values, dict) or set(values) - names:
            unknown = sorted(set(values) - names) if isinstance(values, dict) else "(not a JSON object)"
            raise ValueError(f"{json_file}: unknown keys {unknown}; the options are {sorted(names)}.")
        return tuple(self.instances(values))

    def instances(self, values):
        for dataclass_type in self.dataclass_types:
            fields = [field for field in dataclasses.fields(dataclass_type) if field.init]
            missing = [
                field.name
                for field in fields
                if field.name not in values and field.default is field.default_factory is dataclasses.MISSING
            ]
            if missing:
                raise ValueError(f"missing option(s) {', '.join('--' + name for name in missing)}")
            yield dataclass_type(**{field.name: values[field.name] for field in fields if field.name in values})


def init_field_names(dataclass_type):
    return [field.name for field in dataclasses.fields(dataclass_type) if field.init]


def parse_arguments(dataclass_types, args=None, plain=False) -> tuple:
    """The dataclasses from `args` (default: sys.argv[1:]), or from a single .json file, as transformers' examples.

    plain: read them with PlainArgumentParser (no transformers import) rather than HfArgumentParser.
    """
    parser = PlainArgumentParser(dataclass_types) if plain else argument_parser(dataclass_types)
    argv = [argument for argument in (sys.argv[1:] if args is None else list(args)) if argument != DEBUG_FLAG]
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        # Name the unknown options only: a value given to a misspelt option may be a token.
        unknown = [argument.split("=", 1)[0] for argument in remaining if argument.startswith("-")] or ["(a value)"]
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} (options must be spelt in full); see --help for the list."
        )
    return tuple(parsed)


def debug_requested(argv=None) -> bool:
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENVIRONMENT_VARIABLE, "") not in ("", "0")


def expected_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the input or the request is wrong, not the program."""
    from datasets.exceptions import DatasetGenerationError, NonMatchingChecksumError
    from huggingface_hub.errors import HfHubHTTPError

    # OSError covers missing files and folders, permissions, an unreachable Hub (ConnectionError) and what
    # transformers raises for a model it cannot find.
    return (ValueError, OSError, NonMatchingChecksumError, DatasetGenerationError, HfHubHTTPError, KeyError)


def error_message(error: BaseException) -> str:
    """The error's own words; for a wrapped error (datasets wraps the builder's), the innermost cause's."""
    # A worker process's error arrives with its traceback as text for a cause (_RemoteTraceback): never shown.
    while (
        isinstance(error.__cause__, Exception)
        and type(error).__name__ == "DatasetGenerationError"
        and type(error.__cause__).__name__ != "_RemoteTraceback"
    ):
        error = error.__cause__
    if type(error) is FileExistsError and error.filename and os.path.isfile(error.filename):
        # mkdir(exist_ok=True) on a file: "[Errno 17] File exists" would not say that a folder was wanted there.
        return f"{error.filename} is a file, where a folder is needed: it is left as it is; choose another folder."
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text or type(error).__name__


def run(main, argv=None) -> None:
    """Run `main()` as a command: an expected error becomes `error: <message>` on stderr and exit status 1."""
    if debug_requested(argv):
        main()
        return
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except expected_errors() as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        print(f"(run again with {DEBUG_FLAG} or {DEBUG_ENVIRONMENT_VARIABLE}=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
