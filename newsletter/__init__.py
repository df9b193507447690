"""On This Day: a daily 'What happened today in history?' newsletter and feed publisher."""

from __future__ import annotations

from functools import cache


@cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # costs tens of ms: only when asked

    try:
        return version("onthisday-newsletter")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(f"module 'newsletter' has no attribute {name!r}")
