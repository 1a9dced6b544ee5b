"""Find the provider class a role names: "openai", "openai_completions", "anthropic", "package.module:Class", or an
entry-point name.

    llm: {teacher: {provider: mypkg.providers:MyProvider, options: {...}}}
    # or, in the plugin's pyproject.toml:  [project.entry-points."lion.teachers"]  myprov = "mypkg.providers:MyProvider"

The class is constructed as `Class(role_cfg)` and must have an `identity` string (part of the cache key, no
secrets) and an async `chat(request, params)` method (see lion.teachers.base).
"""

from __future__ import annotations

import importlib
import inspect
from importlib import metadata
from typing import Any

from ..config import RoleConfig
from ..errors import ConfigError
from .base import ChatProvider

GROUP = "lion.teachers"


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=GROUP)}


def _import_class(spec: str, key: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: expected 'package.module:ClassName', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"{key}: cannot import module {module_name!r} ({e})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_provider(role_cfg: RoleConfig, key: str = "llm.<role>.provider") -> ChatProvider:
    """Build the provider `role_cfg.provider` names; ConfigError (naming `key`) when it cannot."""
    spec = role_cfg.provider
    if spec == "openai":
        from .openai_compat import OpenAICompatProvider

        return OpenAICompatProvider(role_cfg, key=key.rsplit(".provider", 1)[0])
    if spec == "openai_completions":
        from .openai_compat import OpenAICompletionsProvider

        return OpenAICompletionsProvider(role_cfg, key=key.rsplit(".provider", 1)[0])
    if spec == "anthropic":
        from .anthropic_provider import AnthropicProvider

        return AnthropicProvider(role_cfg, key=key.rsplit(".provider", 1)[0])
    if ":" in spec:
        cls = _import_class(spec, key)
    else:
        eps = _entry_points()
        if spec not in eps:
            known = ", ".join(sorted(["anthropic", "openai", "openai_completions", *eps]))
            raise ConfigError(f"{key}: unknown provider {spec!r}; use 'openai', 'anthropic', 'package.module:Class', or a "
                              f"registered '{GROUP}' entry point (installed: {known})")
        try:
            cls = eps[spec].load()
        except Exception as e:  # noqa: BLE001 - a broken plugin is a config problem for the user
            raise ConfigError(f"{key}: entry point {spec!r} failed to load ({type(e).__name__}: {e})") from None
    if not callable(cls):
        raise ConfigError(f"{key}: {spec!r} is not a class")
    try:
        provider = cls(role_cfg)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{key}: constructing {spec!r} failed ({type(e).__name__}: {e})") from None
    chat = getattr(provider, "chat", None)
    if not isinstance(getattr(provider, "identity", None), str) or not inspect.iscoroutinefunction(chat):
        raise ConfigError(f"{key}: {spec!r} does not implement the chat protocol (an `identity` string and "
                          "`async def chat(request, params)`)")
    return provider
