"""The search space: per-stage choices around a backbone's stages, as block strings.

Per stage (paper section 3.3): the block type {MBConv, Fused-MBConv}, the number of layers, the
kernel size {3, 5} and the expansion ratio {1, 4, 6}. Strides and channel counts are the
backbone's (and so are the backbone's width and depth scaling, applied when the model is built);
there are no pooling-skip ops. The number of layers of stage `i` ranges over
`r_i - repeat_delta .. r_i + repeat_delta` (at least 1), `r_i` being the backbone's. MBConv
stages keep the backbone's squeeze-excitation ratio; Fused-MBConv stages have none, as in
EfficientNetV2 (and in `efficientnetv2.fused_ablation`).
"""

import dataclasses

import numpy as np

from efficientnetv2 import blocks as blocks_lib

CONV_TYPES = (0, 1)
KERNEL_SIZES = (3, 5)
EXPAND_RATIOS = (1, 4, 6)
_FIELDS = ('conv_type', 'num_repeat', 'kernel_size', 'expand_ratio')


@dataclasses.dataclass(frozen=True)
class StageChoice:
    """What the search picks for one stage."""

    conv_type: int
    num_repeat: int
    kernel_size: int
    expand_ratio: int

    def key(self):
        return (
            f'c{int(self.conv_type)}r{int(self.num_repeat)}'
            f'k{int(self.kernel_size)}e{int(self.expand_ratio)}'
        )


def arch_key(arch):
    """A short unique name of an architecture, e.g. 'c1r1k3e1-c0r2k5e6-...'."""
    return '-'.join(stage.key() for stage in arch)


class SearchSpace:
    """Architectures derived from a backbone's block strings.

    Args:
        backbone_blocks: the backbone's base block strings (before width/depth scaling).
        repeat_delta: how far the number of layers may move from the backbone's, per stage.
        conv_types, kernel_sizes, expand_ratios: the per-stage options.
    """

    def __init__(
        self,
        backbone_blocks,
        repeat_delta=1,
        conv_types=CONV_TYPES,
        kernel_sizes=KERNEL_SIZES,
        expand_ratios=EXPAND_RATIOS,
    ):
        self.base = blocks_lib.decode_list(list(backbone_blocks))
        if repeat_delta < 0:
            raise ValueError(f'repeat_delta must be >= 0. Received: {repeat_delta!r}')
        if not conv_types or any(v not in CONV_TYPES for v in conv_types):
            raise ValueError(
                f'conv_types must be a non-empty subset of {CONV_TYPES}. Received: {conv_types!r}'
            )
        for name, values in (('kernel_sizes', kernel_sizes), ('expand_ratios', expand_ratios)):
            if not values or any(int(v) < 1 for v in values):
                raise ValueError(
                    f'{name} must be a non-empty list of positive integers. Received: {values!r}'
                )
        self.repeat_delta = int(repeat_delta)
        self.conv_types = tuple(int(v) for v in conv_types)
        self.kernel_sizes = tuple(int(v) for v in kernel_sizes)
        self.expand_ratios = tuple(int(v) for v in expand_ratios)

    @property
    def num_stages(self):
        return len(self.base)

    def choices(self, stage):
        """{field: tuple of options} for one stage."""
        r = self.base[stage].num_repeat
        return dict(
            conv_type=self.conv_types,
            num_repeat=tuple(range(max(1, r - self.repeat_delta), r + self.repeat_delta + 1)),
            kernel_size=self.kernel_sizes,
            expand_ratio=self.expand_ratios,
        )

    def size(self):
        """Number of distinct architectures."""
        total = 1
        for stage in range(self.num_stages):
            for options in self.choices(stage).values():
                total *= len(options)
        return total

    def sample(self, rng):
        """A uniformly random architecture (tuple of `StageChoice`)."""
        arch = []
        for stage in range(self.num_stages):
            picks = {
                f: options[int(rng.integers(len(options)))]
                for f, options in self.choices(stage).items()
            }
            arch.append(StageChoice(**picks))
        return tuple(arch)

    def mutate(self, arch, rng):
        """`arch` with one option of one stage changed to another value."""
        mutable = [
            (s, f)
            for s in range(self.num_stages)
            for f, options in self.choices(s).items()
            if len(options) > 1
        ]
        if not mutable:
            return tuple(arch)
        stage, field = mutable[int(rng.integers(len(mutable)))]
        current = getattr(arch[stage], field)
        others = [v for v in self.choices(stage)[field] if v != current]
        arch = list(arch)
        arch[stage] = dataclasses.replace(
            arch[stage], **{field: others[int(rng.integers(len(others)))]}
        )
        return tuple(arch)

    def contains(self, arch):
        return len(arch) == self.num_stages and all(
            getattr(stage, f) in self.choices(i)[f] for i, stage in enumerate(arch) for f in _FIELDS
        )

    def to_blocks(self, arch):
        """Base block strings of an architecture (backbone strides and channels)."""
        if not self.contains(arch):
            raise ValueError(f'Architecture {arch_key(arch)} is not in this search space.')
        out = []
        for base, stage in zip(self.base, arch):
            out.append(
                blocks_lib.encode(
                    base.replace(
                        conv_type=stage.conv_type,
                        num_repeat=stage.num_repeat,
                        kernel_size=stage.kernel_size,
                        expand_ratio=stage.expand_ratio,
                        se_ratio=None if stage.conv_type else base.se_ratio,
                    )
                )
            )
        return out

    def from_blocks(self, block_strings):
        """The architecture that `to_blocks` wrote (raises ValueError for any other strings)."""
        stages = blocks_lib.decode_list(list(block_strings))
        arch = tuple(
            StageChoice(s.conv_type, s.num_repeat, s.kernel_size, s.expand_ratio) for s in stages
        )
        if not self.contains(arch) or self.to_blocks(arch) != list(block_strings):
            raise ValueError(
                f'Block strings {list(block_strings)!r} are not an architecture of this search '
                'space.'
            )
        return arch

    # What the search machinery (`search.run`) asks of a space.

    def arch_key(self, arch):
        return arch_key(arch)

    def arch_to_json(self, arch):
        return arch_to_json(arch)

    def arch_from_json(self, items):
        return arch_from_json(items)

    def trial_overrides(self, arch):
        """The config overrides of a trial: its block strings."""
        return dict(model=dict(blocks=self.to_blocks(arch)))

    def random_archs(self, count, seed):
        """The random search's first `count` architectures: trial i depends on (seed, i) and on
        the earlier trials only (a repeat is redrawn), never on which worker runs it."""
        archs, seen = [], set()
        for i in range(count):
            rng = np.random.default_rng([int(seed), i])
            arch = self.sample(rng)
            for _ in range(100):
                if arch_key(arch) not in seen:
                    break
                arch = self.sample(rng)
            seen.add(arch_key(arch))
            archs.append(arch)
        return archs


def arch_to_json(arch):
    return [dataclasses.asdict(stage) for stage in arch]


def arch_from_json(items):
    return tuple(StageChoice(**{f: int(item[f]) for f in _FIELDS}) for item in items)
