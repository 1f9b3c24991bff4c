"""Entry points of the installed commands that define no flags of their own.

Importing this module (or `efficientnetv2`) defines no absl flags: each command's flags are
defined by its own module (`efficientnetv2.cli`, `efficientnetv2.nas.__main__`), imported only
when that command runs. The console scripts (setup.py):

    efficientnetv2-train    efficientnetv2.cli:run          (= python main.py)
    efficientnetv2-export   efficientnetv2.cli:run_export   (--mode=export by default)
    efficientnetv2-nas      efficientnetv2.console:nas      (= python -m efficientnetv2.nas)
    efficientnetv2-summary  efficientnetv2.summary:main
    efficientnetv2-scale    efficientnetv2.scaling.__main__:main (argparse, no absl flags)
"""

import sys

from absl import app
from absl import flags


def _adopt_key_flags(module_name):
    """Lists `module_name`'s flags in the --helpshort / --help of the running program.

    absl's short help shows the key flags of the main module, named by sys.argv[0]; a console
    script (or main.py) defines none itself.
    """
    main_module = sys.argv[0]
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main_module, flag)


def run(main_fn, module):
    """absl.app.run(main_fn), with `module`'s flags and documentation as the program's own."""
    _adopt_key_flags(sys.argv[0] if module.__name__ == '__main__' else module.__name__)
    program = sys.modules['__main__']
    if program is not module:  # A console script or main.py: --help shows the command's usage.
        program.__doc__ = module.__doc__
    app.run(main_fn)


def nas():
    """Console script `efficientnetv2-nas`: the training-aware architecture search."""
    from efficientnetv2.nas import __main__ as nas_main

    run(nas_main.main, nas_main)
