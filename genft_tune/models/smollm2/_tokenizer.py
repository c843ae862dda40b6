"""SmolLM2's tokenizer for torchtune: byte-level BPE (``tokenizer.json``) + ChatML.

``tokenize_messages`` reproduces SmolLM2-Instruct's chat template (the one in its
``tokenizer_config.json``)::

    <|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n

so a model fine-tuned with torchtune sees the same tokens as
``tokenizer.apply_chat_template`` produces at inference.
"""

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torchtune.data import Message, PromptTemplate, truncate
from torchtune.data._prompt_templates import _get_prompt_template, _TemplateType
from torchtune.modules.transforms import Transform
from torchtune.modules.transforms.tokenizers import HuggingFaceBaseTokenizer, ModelTokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# The system message SmolLM2-Instruct's chat template inserts when there is none.
SMOLLM2_DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class SmolLM2Tokenizer(ModelTokenizer, Transform):
    """SmolLM2's byte-level BPE tokenizer with its ChatML chat format.

    Special tokens: ``<|im_start|>`` opens a turn (``bos_id``), ``<|im_end|>`` closes it
    and is the stop token (``eos_id``); ``pad_id`` is the ``pad_token`` of
    ``tokenizer_config.json`` (``<|im_end|>`` for SmolLM2-Instruct).

    Masking follows torchtune's tokenizers: every token of a message (header, content
    and ``<|im_end|>\\n``) takes that message's ``masked`` flag.

    Args:
        path (str): ``tokenizer.json``, or the directory holding it. Its
            ``tokenizer_config.json`` and/or ``generation_config.json`` must sit beside it.
        max_seq_len (Optional[int]): truncate token sequences to this length. Default: None
        prompt_template (Optional[PromptTemplate]): template applied to the messages
            before ChatML formatting. Default: None
        default_system_prompt (Optional[str]): system message prepended when a
            conversation has none, as SmolLM2's chat template does; None to disable.
            Default: SmolLM2's own.

    Raises:
        FileNotFoundError: if ``tokenizer.json`` or both config files are missing.
        ValueError: if the vocabulary lacks ``<|im_start|>`` or ``<|im_end|>``.
    """

    def __init__(
        self,
        path: str,
        max_seq_len: Optional[int] = None,
        prompt_template: Optional[PromptTemplate] = None,
        default_system_prompt: Optional[str] = SMOLLM2_DEFAULT_SYSTEM_PROMPT,
    ):
        tokenizer_json = Path(path)
        if tokenizer_json.is_dir():
            tokenizer_json = tokenizer_json / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"SmolLM2 tokenizer file not found: {tokenizer_json}")
        config = tokenizer_json.parent / "tokenizer_config.json"
        generation = tokenizer_json.parent / "generation_config.json"
        if not (config.is_file() or generation.is_file()):
            raise FileNotFoundError(
                f"neither {config.name} nor {generation.name} found next to {tokenizer_json}: "
                "they name the special tokens (convert the model with "
                "genft_tune.models.smollm2._convert_gguf, or download the HF repo)"
            )
        self.base = HuggingFaceBaseTokenizer(
            str(tokenizer_json),
            tokenizer_config_json_path=str(config) if config.is_file() else None,
            generation_config_path=str(generation) if generation.is_file() else None,
        )
        hf = self.base.tokenizer
        ids = {t: hf.token_to_id(t) for t in (IM_START, IM_END)}
        for token, token_id in ids.items():
            if token_id is None:
                raise ValueError(f"{tokenizer_json} has no {token} token: not a SmolLM2 (ChatML) tokenizer")
        self.im_start_id = ids[IM_START]
        self.im_end_id = ids[IM_END]
        self.bos_id = self.im_start_id
        self.eos_id = self.im_end_id
        self.base.bos_id, self.base.eos_id = self.bos_id, self.eos_id
        self.base._infer_should_add_bos_eos()
        pad = self.base.config.get("pad_token") if self.base.config else None
        if isinstance(pad, dict):
            pad = pad.get("content")
        pad_id = hf.token_to_id(pad) if isinstance(pad, str) else None
        self.pad_id = pad_id if pad_id is not None else self.eos_id
        self.special_tokens: Dict[str, int] = {
            t.content: i for i, t in hf.get_added_tokens_decoder().items() if t.special
        }
        self.stop_tokens = [self.eos_id]
        self.max_seq_len = max_seq_len
        self.prompt_template = prompt_template
        self.default_system_prompt = default_system_prompt
        self._newline = self.encode("\n", add_bos=False, add_eos=False)

    @property
    def vocab_size(self) -> int:
        return self.base.tokenizer.get_vocab_size()

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True) -> List[int]:
        """Encode plain text (no chat format).

        Args:
            text (str): the text.
            add_bos (bool): prepend ``<|im_start|>``. Default: True
            add_eos (bool): append ``<|im_end|>``. Default: True

        Returns:
            List[int]: token ids.
        """
        return self.base.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, token_ids: List[int], skip_special_tokens: bool = True) -> str:
        """Decode token ids to text.

        Args:
            token_ids (List[int]): the ids.
            skip_special_tokens (bool): drop special tokens. Default: True

        Returns:
            str: the text.
        """
        return self.base.tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def tokenize_messages(
        self, messages: List[Message], *, add_end_tokens: bool = True
    ) -> Tuple[List[int], List[bool]]:
        """Tokenize a conversation in ChatML.

        Args:
            messages (List[Message]): the conversation.
            add_end_tokens (bool): close the last turn with ``<|im_end|>\\n``. With False
                (generation) the last assistant turn is left open, and if the last
                message is not an assistant one the generation prompt
                ``<|im_start|>assistant\\n`` is appended, as
                ``apply_chat_template(add_generation_prompt=True)`` does. Default: True

        Returns:
            Tuple[List[int], List[bool]]: token ids and the loss mask (True = not trained on).

        Raises:
            RuntimeError: if a message has non-text content.
        """
        if self.prompt_template is not None:
            messages = self.prompt_template(messages)
        if self.default_system_prompt is not None and (not messages or messages[0].role != "system"):
            messages = [Message(role="system", content=self.default_system_prompt, masked=True), *messages]
        tokens: List[int] = []
        mask: List[bool] = []
        for index, message in enumerate(messages):
            last = index == len(messages) - 1
            toks = [self.im_start_id] + self.encode(f"{message.role}\n", add_bos=False, add_eos=False)
            for item in message.content:
                if item["type"] != "text":
                    raise RuntimeError(f"Unsupported message content type: {item['type']}")
                toks += self.encode(item["content"], add_bos=False, add_eos=False)
            if add_end_tokens or not (last and message.role == "assistant"):
                toks += [self.im_end_id] + self._newline
            tokens += toks
            mask += [message.masked] * len(toks)
        if not add_end_tokens and (not messages or messages[-1].role != "assistant"):
            prompt = [self.im_start_id] + self.encode("assistant\n", add_bos=False, add_eos=False)
            tokens += prompt
            mask += [True] * len(prompt)
        if self.max_seq_len and len(tokens) > self.max_seq_len:
            tokens = truncate(tokens, self.max_seq_len, self.eos_id if add_end_tokens else None)
            mask = truncate(mask, self.max_seq_len, True if add_end_tokens else None)
        return tokens, mask

    def __call__(self, sample: Mapping[str, Any], inference: bool = False) -> Mapping[str, Any]:
        """Replace ``sample["messages"]`` by ``"tokens"`` and ``"mask"``.

        Args:
            sample (Mapping[str, Any]): a sample with a ``"messages"`` list.
            inference (bool): leave the conversation open for generation. Default: False

        Returns:
            Mapping[str, Any]: the sample with ``tokens`` and ``mask``.
        """
        messages = sample.pop("messages")
        tokens, mask = self.tokenize_messages(messages, add_end_tokens=not inference)
        sample["tokens"] = tokens
        sample["mask"] = mask
        return sample


def smollm2_tokenizer(
    path: Union[str, os.PathLike],
    max_seq_len: Optional[int] = None,
    prompt_template: Optional[_TemplateType] = None,
    default_system_prompt: Optional[str] = SMOLLM2_DEFAULT_SYSTEM_PROMPT,
) -> SmolLM2Tokenizer:
    """Builder for SmolLM2's tokenizer (ChatML chat format).

    Args:
        path (Union[str, os.PathLike]): ``tokenizer.json`` or the model directory.
        max_seq_len (Optional[int]): truncate sequences to this length. Default: None
        prompt_template (Optional[_TemplateType]): a ``PromptTemplate``, its dotpath, or a
            dict of ``{role: (prepend, append)}``. Default: None
        default_system_prompt (Optional[str]): system message added when a conversation
            has none (SmolLM2's template does so); None to disable. Default: SmolLM2's own.

    Returns:
        SmolLM2Tokenizer: the tokenizer.
    """
    return SmolLM2Tokenizer(
        path=str(path),
        max_seq_len=max_seq_len,
        prompt_template=_get_prompt_template(prompt_template) if prompt_template is not None else None,
        default_system_prompt=default_system_prompt,
    )
