"""Builders that take a method's hyperparameters as keywords without restating them.

A method's config dataclass (``GenFTConfig``, ``WeGeFTConfig``) is the one declaration of
its fields: their names, defaults, checks and documentation. A builder written as
``build(*, ..., config)`` and decorated with :func:`takes_config_fields` is called as
``build(*, ..., shared_dim=8, ratio=0.5)`` instead: its signature lists every field as a
keyword-only parameter with the class's default (so ``inspect.signature``, torchtune's
``config.instantiate`` and the recipes' unknown-key check see them), its docstring gains
the class's own description of each field, and a call builds (and so validates) the
config before anything is allocated.
"""

import dataclasses
import difflib
import functools
import inspect
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

_ARG_LINE = re.compile(r"^(\s+)(\*{0,2}\w+) \(([^)]*)\):")


def args_section(doc: Optional[str]) -> Dict[str, str]:
    """The entries of a Google-style docstring's ``Args:`` block, ``{name: "name (type): text"}``
    (continuation lines kept, dedented to the entry's indentation)."""
    entries: Dict[str, List[str]] = {}
    lines = inspect.cleandoc(doc or "").splitlines()
    inside, current, indent = False, None, ""
    for line in lines:
        if line.strip() == "Args:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):  # the next section
            break
        match = _ARG_LINE.match(line)
        if match and (current is None or len(match.group(1)) <= len(indent)):
            indent, current = match.group(1), match.group(2)
            entries[current] = [line[len(indent):]]
        elif current is not None and line.strip():
            entries[current].append(line[len(indent):])
    return {name: "\n".join(text) for name, text in entries.items()}


def insert_args(doc: Optional[str], entries: List[str]) -> str:
    """``doc`` with ``entries`` (``"name (type): text"``) appended to its ``Args:`` block."""
    lines = inspect.cleandoc(doc or "").splitlines()
    block = [("    " + row) if row else row for entry in entries for row in entry.splitlines()]
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    except StopIteration:
        return "\n".join(lines + ["", "Args:"] + ["    " + row for entry in entries for row in entry.splitlines()])
    end = next((i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith(" ")), len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    after = lines[end:]
    while after and not after[0].strip():
        after.pop(0)
    return "\n".join(lines[:end] + block + ([""] + after if after else []))


def _field_entry(keyword: str, name: str, type_: Any, default: Any, documented: Mapping[str, str]) -> str:
    text = documented.get(name, f"{name}: see the config class.")
    text = text.split(":", 1)[1].strip() if ":" in text else text
    return f"{keyword} ({getattr(type_, '__name__', type_)}): {text} Default: {default!r}"


def takes_config_fields(
    config_class: type, *, keywords: Optional[Mapping[str, str]] = None, defaults: Optional[Mapping[str, Any]] = None
) -> Callable:
    """Decorator: ``build(*, ..., config)`` becomes a builder that takes ``config_class``'s
    fields as keyword arguments (see the module doc).

    Args:
        config_class (type): the method's config dataclass.
        keywords (Optional[Mapping[str, str]]): keyword names that differ from the field
            names (WeGeFT's Llama builders take ``wegeft_rank`` for ``rank``). Default: None
        defaults (Optional[Mapping[str, Any]]): the builder's own defaults for some fields,
            by field name (the ViT builders keep the authors' VTAB settings). Default: None

    Returns:
        Callable: the decorator.
    """
    defaults = dict(defaults or {})
    # (name, type, default) of each field, with the builder's own defaults
    fields = [(f.name, f.type, defaults.get(f.name, f.default)) for f in dataclasses.fields(config_class)]
    keyword_of = {name: (keywords or {}).get(name, name) for name, _, _ in fields}
    documented = args_section(config_class.__doc__)

    def decorate(build: Callable) -> Callable:
        own = [p for p in inspect.signature(build).parameters.values() if p.name != "config"]
        own_names = {p.name for p in own}
        field_params = [
            inspect.Parameter(keyword_of[name], inspect.Parameter.KEYWORD_ONLY, default=default, annotation=type_)
            for name, type_, default in fields
        ]

        @functools.wraps(build)
        def builder(**kwargs: Any):
            values = {**defaults, **{name: kwargs.pop(keyword) for name, keyword in keyword_of.items() if keyword in kwargs}}
            reject_unknown(build.__name__, kwargs, own_names | set(keyword_of.values()))
            return build(**kwargs, config=config_class(**values))

        builder.__signature__ = inspect.signature(build).replace(parameters=own + field_params)
        builder.__doc__ = insert_args(
            build.__doc__, [_field_entry(keyword_of[name], name, type_, default, documented) for name, type_, default in fields]
        )
        builder.config_class = config_class
        return builder

    return decorate


def reject_unknown(name: str, kwargs: Mapping[str, Any], known: set) -> None:
    """Python's "unexpected keyword argument" TypeError, with the closest known name."""
    for key in kwargs:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r}{hint}")


def sized_builder(
    component: Callable,
    *,
    name: str,
    summary: str,
    fixed: Mapping[str, Any],
    defaults: Mapping[str, Any],
    positional: Tuple[str, ...] = (),
) -> Callable:
    """A builder of one model size: ``component`` with the architecture's numbers fixed.

    Args:
        component (Callable): the family's builder (``llama_genft``...).
        name (str): the new builder's name (``genft_llama3_2_1b``).
        summary (str): the docstring's first line.
        fixed (Mapping[str, Any]): the architecture's arguments, not settable.
        defaults (Mapping[str, Any]): other arguments with this size's defaults
            (still settable).
        positional (Tuple[str, ...]): arguments that may also be given by position, first
            (``vit_tiny(5)`` for ``num_classes``). Default: ()

    Returns:
        Callable: a keyword-only builder whose signature and docstring list exactly the
        arguments it takes.
    """
    signature = inspect.signature(component)
    params: List[inspect.Parameter] = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for p in signature.parameters.values()
        if p.name not in fixed
    ]
    by_name = {p.name: p for p in params}
    params = [by_name[n].replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in positional] + [
        p for p in params if p.name not in positional
    ]
    known = set(by_name)

    def builder(*args: Any, **kwargs: Any):
        if len(args) > len(positional):
            raise TypeError(f"{name}() takes {len(positional)} positional arguments but {len(args)} were given")
        kwargs.update(zip(positional, args))
        reject_unknown(name, kwargs, known)
        return component(**fixed, **{**defaults, **kwargs})

    documented = args_section(component.__doc__)
    entries = []
    for p in params:
        entry = documented.get(p.name, f"{p.name}: see :func:`{component.__name__}`.")
        if p.name in defaults:
            entry = re.sub(r"\s*Default: .*$", "", entry, flags=re.S) + f" Default: {defaults[p.name]!r}"
        entries.append(entry)
    numbers = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    builder.__name__ = builder.__qualname__ = name
    builder.__signature__ = signature.replace(parameters=params)
    builder.__doc__ = insert_args(
        f"{summary}\n\n:func:`{component.__name__}` with this architecture: {numbers}.\n\n"
        f"Args:\n\nReturns:\n    {signature.return_annotation.__name__}: the model.",
        entries,
    )
    return builder


def shared_args_doc(placeholder: str, text: str) -> Callable[[Callable], Callable]:
    """A decorator writing ``text`` (``Args:`` entries several builders of one family
    share) where a builder's docstring says ``{placeholder}``: one text, not a copy per
    builder."""

    def document(build: Callable) -> Callable:
        if build.__doc__:  # None under python -OO
            build.__doc__ = build.__doc__.replace("{" + placeholder + "}", text)
        return build

    return document
