"""Uploads of merged models and adapters to the Hugging Face Hub (staging, the Hub's
card, one commit). The cards themselves are built in :mod:`genft_tune.cards`; reading
checkpoints and adapters goes through :mod:`genft_tune.checkpointing`."""

from genft_tune.cards._model_card import build_model_card, parse_metric_log, plot_loss_curve
from genft_tune.hub._upload import publish_folder, stage_folder

__all__ = ["build_model_card", "parse_metric_log", "plot_loss_curve", "publish_folder", "stage_folder"]
