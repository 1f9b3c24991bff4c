"""Entry points of the installed commands that define no flags of their own, and their exit codes.

Importing this module (or `efficientnetv2`) defines no absl flags: each command's flags are
defined by its own module (`efficientnetv2.cli`, `efficientnetv2.nas.__main__`), imported only
when that command runs. The console scripts (setup.py):

    efficientnetv2-train    efficientnetv2.cli:run          (= python main.py)
    efficientnetv2-export   efficientnetv2.cli:run_export   (--mode=export by default)
    efficientnetv2-nas      efficientnetv2.nas.__main__:console_main (= python -m ...nas)
    efficientnetv2-summary  efficientnetv2.summary:main
    efficientnetv2-scale    efficientnetv2.scaling.__main__:main (argparse, no absl flags)

Exit codes of every command run through `run`: 0 done (and after --help, --helpshort,
--helpfull); 1 a run error (logged); 2 a usage error: a flag that does not parse, an unknown
flag, a positional argument, or an `app.UsageError` raised by the command (a bad config value,
no run config, ...). A usage error prints its message and one line pointing at --helpshort,
not the help itself.
"""

import sys

from absl import app
from absl import flags

EXIT_USAGE = 2


def usage_error(message):
    """Ends the program as a usage error: `message` first, a pointer to the help, exit 2."""
    sys.stderr.write(f'Usage error: {message}\nPass --helpshort to list the flags.\n')
    sys.stderr.flush()
    sys.exit(EXIT_USAGE)


def _parse_flags(argv):
    """absl's flag parsing, with a usage error's exit code and a help that exits 0."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        usage_error(str(e))
    except SystemExit as e:
        # While parsing, absl exits only for --help, --helpshort, --helpfull and --helpxml,
        # with status 1 after printing the help: asked-for help is a success.
        raise SystemExit(0 if e.code == 1 else e.code) from None


def _adopt_key_flags(module_name):
    """Lists `module_name`'s flags in the --helpshort / --help of the running program.

    absl's short help shows the key flags of the main module, named by sys.argv[0]; a console
    script (or main.py) defines none itself.
    """
    main_module = sys.argv[0]
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main_module, flag)


def run(main_fn, module):
    """absl.app.run(main_fn), with `module`'s flags and documentation as the program's own.

    Usage errors (flags that do not parse, `app.UsageError` from `main_fn`) exit 2 with their
    message and no help dump; --help and its variants exit 0.
    """
    _adopt_key_flags(sys.argv[0] if module.__name__ == '__main__' else module.__name__)
    program = sys.modules['__main__']
    if program is not module:  # A console script or main.py: --help shows the command's usage.
        program.__doc__ = module.__doc__

    def main(argv):
        try:
            return main_fn(argv)
        except app.UsageError as e:
            usage_error(str(e))

    app.run(main, flags_parser=_parse_flags)
