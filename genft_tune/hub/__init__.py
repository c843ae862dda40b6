"""Model cards and uploads of merged GenFT models to the Hugging Face Hub."""

from genft_tune.hub._model_card import build_model_card, parse_metric_log, plot_loss_curve
from genft_tune.hub._upload import publish_folder, stage_folder

__all__ = ["build_model_card", "parse_metric_log", "plot_loss_curve", "publish_folder", "stage_folder"]
