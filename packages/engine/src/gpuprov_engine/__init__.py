"""gpuprov_engine: continuous batching over a static KV cache, with CUDA-graph decode on GPUs."""

from .engine import Engine, EngineClosedError, QueueFullError, Result, TokenEvent
from .metrics import EngineMetrics

__all__ = ["Engine", "EngineClosedError", "EngineMetrics", "QueueFullError", "Result", "TokenEvent"]
