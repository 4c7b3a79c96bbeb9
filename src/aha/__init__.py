"""aha: train language models to reason with GRPO (the course's system as real software)."""

__version__ = "0.1.0"

from aha.data.answers import parse_reasoning  # noqa: E402
from aha.train.config import GRPOConfig  # noqa: E402
from aha.train.grpo import GRPOTrainer  # noqa: E402

__all__ = ["GRPOConfig", "GRPOTrainer", "__version__", "parse_reasoning"]
