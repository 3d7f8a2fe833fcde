"""One mechanism for the user's code: a built-in name or "package.module:function".

`config.model.name`, `config.data.name`, `config.model.loss`, the metrics and
`data.kwargs.decode` all resolve through `resolve`; the built-ins are entries
of a registry handed in by the caller, so a module on `PYTHONPATH` outside the
repository is as first-class as ours. Every failure is a `ConfigError` naming
the field and echoing the value it received (exit 2 through the launcher).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from configs.validation import ConfigError

IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def resolve(field: str, name: str, builtins: Mapping[str, Any]) -> Any:
    """The object `name` stands for: `builtins[name]` or an import path's attribute.

    Raises:
      ConfigError: an unknown built-in name, an unimportable module or a
        missing attribute; the message names `field` and echoes `name`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(field, "expected a built-in name or 'package.module:function'.", name)
    if ":" not in name:
        if name not in builtins:
            raise ConfigError(
                field,
                f"unknown built-in; known: {sorted(builtins)}, or 'package.module:function'.",
                name,
            )
        return builtins[name]
    if not IMPORT_PATH.match(name):
        raise ConfigError(field, "expected 'package.module:function'.", name)
    module_name, attribute = name.split(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # The user's module: any error while importing it is bad input.
        raise ConfigError(
            field, f"cannot import module {module_name!r} ({_one_line(e)}).", name
        ) from e
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, f"module {module_name!r} has no attribute {part!r}.", name)
        obj = getattr(obj, part)
    return obj


def check_kwargs(field: str, fn: Callable, kwargs: Mapping[str, Any]) -> None:
    """Refuses keyword arguments `fn`'s signature does not take.

    Args:
      field: the config field holding the kwargs, e.g. "model.kwargs".
      fn: the factory.
      kwargs: the keyword arguments it will be called with.
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # A builtin without a signature: calling it will tell.
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"{field}.{key}",
                f"not an argument of {_qualname(fn)}; it takes {accepted}.",
                kwargs[key],
            )
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in kwargs:
            raise ConfigError(f"{field}.{name}", f"required by {_qualname(fn)}.", None)


def _qualname(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def call_factory(section: str, name: str, fn: Callable, kwargs: Mapping[str, Any]) -> Any:
    """`fn(**kwargs)`, its failures turned into one-line `ConfigError`s.

    Args:
      section: "model" or "data": errors name `{section}.kwargs.KEY` or
        `{section}.name`.
      name: what `{section}.name` holds (echoed in errors).
      fn: the factory `resolve` returned.
      kwargs: `{section}.kwargs` as a plain dict.

    Raises:
      ConfigError: an argument the factory does not take or lacks, or the
        factory raised (a `ConfigError` it raises passes unchanged).
    """
    if not callable(fn):
        raise ConfigError(f"{section}.name", "does not name a callable.", name)
    check_kwargs(f"{section}.kwargs", fn, kwargs)
    try:
        return fn(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # The user's factory: its failure is reported as bad input.
        raise ConfigError(f"{section}.name", f"the factory raised {_one_line(e)}.", name) from e


def plain(node: Any) -> Any:
    """A ConfigDict (or FieldReference) tree as plain dicts, lists and values."""
    if hasattr(node, "to_dict"):
        node = node.to_dict()
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    if hasattr(node, "get") and hasattr(node, "set"):  # A FieldReference.
        return plain(node.get())
    return node
