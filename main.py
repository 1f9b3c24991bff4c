"""Command line for EfficientNet / EfficientNetV2 in a checkout: train, evaluate, export, infer.

    python main.py                # digits demo: train + eval, offline
    python main.py --helpshort    # flags, modes, exit codes

A thin wrapper: the command is `efficientnetv2.cli`, installed as `efficientnetv2-train` (same
flags, same behaviour).
"""

from efficientnetv2 import cli
from efficientnetv2.cli import _stopped_early  # noqa: F401  (tests use them from main.py)
from efficientnetv2.cli import EXIT_PREEMPTED  # noqa: F401

if __name__ == '__main__':
    cli.run()
