"""What a base checkpoint directory says about itself: its Hub id and its license.

- Hub id: ``original_repo_id.json`` (``{"repo_id": ...}``, written by torchtune's
  ``tune download``), else the ``base_model`` of the directory's own model card (a
  conversion of a Hub model, such as the quickstart's SmolLM2, names its source there).
- License: the ``license`` of the directory's model card (``README.md`` front matter, as
  on the Hub).
"""

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

PathLike = Union[str, os.PathLike]

CARD_FILE = "README.md"
REPO_ID_FILE = "original_repo_id.json"  # torchtune.training.checkpointing._utils.REPO_ID_FNAME
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def front_matter(text: str) -> Dict[str, Any]:
    """The YAML front matter of a model card (``{}`` when there is none or it is broken)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        data = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def base_card(base_dir: Optional[PathLike]) -> Dict[str, Any]:
    """The front matter of ``base_dir/README.md`` (``{}`` when absent)."""
    path = Path(base_dir) / CARD_FILE if base_dir else None
    if path is None or not path.is_file():
        return {}
    return front_matter(path.read_text(encoding="utf8", errors="replace"))


def base_hub_id(base_dir: Optional[PathLike]) -> Optional[str]:
    """The base's Hub id, when the directory records it (see the module docstring)."""
    if not base_dir:
        return None
    path = Path(base_dir) / REPO_ID_FILE
    if path.is_file():
        try:
            repo_id = json.loads(path.read_text()).get("repo_id")
        except (json.JSONDecodeError, AttributeError):
            repo_id = None
        if isinstance(repo_id, str) and HUB_ID.match(repo_id):
            return repo_id
    card_base = base_card(base_dir).get("base_model")
    if isinstance(card_base, list) and len(card_base) == 1:
        card_base = card_base[0]
    return card_base if isinstance(card_base, str) and HUB_ID.match(card_base) else None


def base_license(base_dir: Optional[PathLike]) -> Optional[str]:
    """The ``license`` of the base's model card, if it has one."""
    value = base_card(base_dir).get("license")
    return value if isinstance(value, str) and value else None


__all__ = ["base_card", "base_hub_id", "base_license", "front_matter", "HUB_ID", "REPO_ID_FILE"]
