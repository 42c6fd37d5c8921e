"""Tensor parallelism: one llama-style low-bit model split over N ranks that talk through torch.distributed.

- `plan.py`: which heads, MLP columns and vocabulary rows each rank holds (cuts on quantization groups);
- `shard.py`: cutting a rank's part out of each packed checkpoint tensor as it streams past;
- `load.py`: loading one rank's shard from a GGUF file, HF folder or xpullm low-bit folder;
- `layers.py`: the collectives (all-reduce after row-split projections, all-gather of the vocabulary);
- `backends.py` / `group.py`: gloo (CPU), NCCL (CUDA), XCCL (xpu), and a rank's process group;
- `launch.py` / `mirror.py`: spawning the workers and mirroring rank 0's calls to them.

The engine builds on these (`LLM(..., tensor_parallel=N)`); this package knows nothing of the engine.
"""

from xpullm.parallel.backends import BACKENDS, CollectiveBackend, backend_for, register_backend
from xpullm.parallel.errors import RankFailed, TensorParallelError
from xpullm.parallel.group import RankGroup
from xpullm.parallel.launch import RankContext, RankSet, load_builder, rank_device
from xpullm.parallel.layers import RowParallelLinear, VocabParallelEmbedding, VocabParallelHead, parallelize
from xpullm.parallel.load import load_shard, plan_for_source, read_config
from xpullm.parallel.mirror import Mirrored
from xpullm.parallel.plan import ModelShape, RankShard, TPPlan, plan_split
from xpullm.parallel.shard import shard_config, shard_tensors, slice_columns, slice_rows

__all__ = [
    "BACKENDS",
    "CollectiveBackend",
    "Mirrored",
    "ModelShape",
    "RankContext",
    "RankFailed",
    "RankGroup",
    "RankSet",
    "RankShard",
    "RowParallelLinear",
    "TPPlan",
    "TensorParallelError",
    "VocabParallelEmbedding",
    "VocabParallelHead",
    "backend_for",
    "load_builder",
    "load_shard",
    "parallelize",
    "plan_for_source",
    "plan_split",
    "rank_device",
    "read_config",
    "register_backend",
    "shard_config",
    "shard_tensors",
    "slice_columns",
    "slice_rows",
]
