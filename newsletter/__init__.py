"""On This Day: a daily 'What happened today in history?' newsletter and feed publisher."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onthisday-newsletter")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"
