"""Uploads of merged models and adapters to the Hugging Face Hub: a staged copy of the
folder (the Hub's card, the loss curve, no private files) and one commit. The cards
themselves are built in :mod:`genft_tune.cards`; checkpoints and adapters are read
through :mod:`genft_tune.checkpointing`."""

from genft_tune.hub._upload import publish_folder, stage_folder

__all__ = ["publish_folder", "stage_folder"]
