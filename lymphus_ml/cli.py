"""Command-line plumbing every script shares: argument parsing without abbreviations, and expected errors as one line.

An expected error (bad input, bad argument, a missing file, a checksum mismatch, a Hub refusal) is printed as one
message naming what is at fault, with a non-zero exit and no traceback. `--debug` on the command line, or
`LYMPHUS_DEBUG=1` in the environment, shows the traceback instead.
"""

import os
import sys

from transformers import HfArgumentParser


DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT_VARIABLE = "LYMPHUS_DEBUG"


def argument_parser(dataclass_types, **kwargs) -> HfArgumentParser:
    """HfArgumentParser that refuses abbreviated options: `--hub_tok` must never stand for `--hub_token`."""
    return HfArgumentParser(dataclass_types, allow_abbrev=False, **kwargs)


def parse_arguments(dataclass_types, args=None) -> tuple:
    """The dataclasses from `args` (default: sys.argv[1:]), or from a single .json file, as transformers' examples."""
    parser = argument_parser(dataclass_types)
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
    while isinstance(error.__cause__, Exception) and type(error).__name__ == "DatasetGenerationError":
        error = error.__cause__
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
