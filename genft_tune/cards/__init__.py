"""Model cards (``README.md``) and run files of a checkpoint folder: the base's own card
(its Hub id and license), the training run's config and metric logs, the loss curve, and
the card that merged folders and adapters get.

Below :mod:`genft_tune.checkpointing` (merge and the recipes write cards into the folders
they produce) and :mod:`genft_tune.hub` (publish stages them); imports neither.
"""

from genft_tune.cards._base import base_hub_id, base_license
from genft_tune.cards._model_card import (
    build_model_card,
    find_run_files,
    parse_metric_log,
    plot_loss_curve,
    write_local_card,
)

__all__ = [
    "base_hub_id",
    "base_license",
    "build_model_card",
    "find_run_files",
    "parse_metric_log",
    "plot_loss_curve",
    "write_local_card",
]
