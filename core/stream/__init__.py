"""Online data: stream records, the replay buffer, rolling plan windows, online loading.

Re-exports only; see the modules for details.
"""

from laden.stream.buffer import BufferConfig, Draw, ReplayBuffer, Snapshot
from laden.stream.loader import OnlineLoader
from laden.stream.record import SampleChunk, SampleRows
from laden.stream.window import RollingPlanWindow, Window

__all__ = [
    "BufferConfig",
    "Draw",
    "OnlineLoader",
    "ReplayBuffer",
    "RollingPlanWindow",
    "SampleChunk",
    "SampleRows",
    "Snapshot",
    "Window",
]
