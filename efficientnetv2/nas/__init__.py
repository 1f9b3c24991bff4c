"""Training-aware neural architecture search (EfficientNetV2 paper, section 3.3).

    python -m efficientnetv2.nas --dataset_cfg=digits --trials=4 --epochs=1 --image_size=24

- `space`: the search space (per stage: MBConv or Fused-MBConv, repeats, kernel 3/5, expansion
  1/4/6; channels and strides reused from the backbone) and its block-string encoding.
- `search`: trials (train at a reduced size, time a train step, count parameters, score
  `A * S^w * P^v`), the claim-file work queue, resume, failures, result tables.
"""

from efficientnetv2.nas.search import Settings
from efficientnetv2.nas.search import measure_step_time
from efficientnetv2.nas.search import reward
from efficientnetv2.nas.search import run
from efficientnetv2.nas.space import SearchSpace

__all__ = [
    'Settings',
    'measure_step_time',
    'reward',
    'run',
    'SearchSpace',
]
