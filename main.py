"""Command line for EfficientNet / EfficientNetV2 in a checkout: train, evaluate, export, infer.

    python main.py                # digits demo: train + eval, offline
    python main.py --helpshort    # flags, modes, exit codes

A thin wrapper: the command is `efficientnetv2.cli`, installed as `efficientnetv2-train` (same
flags, same behaviour).
"""

from efficientnetv2 import cli

if __name__ == '__main__':
    cli.run()
