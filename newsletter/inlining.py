"""Inline the email stylesheet with premailer, and keep the result for the next render of the same HTML.

premailer and cssutils are most of a cold ``send --dry-run``: about 60 ms to import and 50 ms
to inline an edition, every time a process renders one. The inlined HTML is a pure function
of premailer's input: the HTML Jinja rendered (which already holds everything an edition
depends on: the templates, the event, every setting that reaches them), the two stylesheets,
the options below and the versions of the libraries. So it is stored in
``paths.state/cache/inline/`` under a SHA-256 of all of those; a later render of the same
edition, in any process (the daily job after a dry run or a preview), reads those bytes back
and never imports premailer. A changed template, event file or setting changes the HTML and
so the key: a stale entry can never be read, only left to be pruned.

The cache is a convenience, never state: it is written only into a state folder that exists
already (a dry run on a fresh install creates nothing), atomically, and any problem reading
or writing it (a read-only folder, a damaged file) falls back to inlining.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
import tempfile
import types
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_FOLDER = Path("cache") / "inline"  # under paths.state
CACHE_KEEP = 64  # entries kept; the oldest go when a new one is written
LIBRARIES = ("premailer", "cssutils", "cssselect", "lxml")  # whose versions can change the output


def inline(html: str, templates: Path, state_dir: Path | None = None) -> str:
    """Return ``html`` with email.css inlined and media.css in a <style> block, from the cache when it has it."""
    css = (templates / "email" / "email.css").read_text(encoding="utf-8")
    media = (templates / "email" / "media.css").read_text(encoding="utf-8")
    key = cache_key(html, css, media)
    folder = state_dir / CACHE_FOLDER if state_dir is not None else None
    if folder is not None and (cached := read_cached(folder, key)) is not None:
        return cached
    inlined = premailer_inline(html, css, media)
    if folder is not None and state_dir is not None and state_dir.is_dir():
        write_cached(folder, key, inlined)
    return inlined


def premailer_inline(html: str, css: str, media: str) -> str:
    """Inline ``css`` with premailer (offline); keep the @media rules of ``media`` in a <style> block."""
    premailer = import_premailer()
    inliner = premailer.Premailer(
        html,
        css_text=css,
        allow_network=False,
        allow_loading_external_files=False,
        strip_important=False,  # the kept @media rules need !important to beat inline styles
        keep_style_tags=False,
        remove_classes=False,  # the @media rules select by class
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        disable_link_rewrites=True,
    )
    inlined = inliner.transform(pretty_print=False)
    return inlined.replace("</head>", f'<style type="text/css">\n{media}</style>\n</head>', 1)


def cache_key(html: str, css: str, media: str) -> str:
    """The SHA-256 of everything the inlined HTML depends on."""
    digest = hashlib.sha256(_code_stamp().encode())
    for part in (html, css, media):
        digest.update(b"\0%d\0" % len(part))
        digest.update(part.encode("utf-8"))
    return digest.hexdigest()


@cache
def _code_stamp() -> str:
    """This module's own source (the options above) and the installed versions of the libraries."""
    own = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    return "\n".join([own, *(_library_version(name) for name in LIBRARIES)])


def _library_version(name: str) -> str:
    """The installed distribution of a library, from its .dist-info folder's name (importlib.metadata costs ~50 ms)."""
    spec = importlib.util.find_spec(name)  # finds it without importing it
    if spec is None or spec.origin is None:
        return f"{name}: missing"
    origin = Path(spec.origin)
    infos = sorted(p.name for p in origin.parent.parent.glob(f"{name}-*.dist-info"))
    if infos:
        return " ".join(infos)
    stat = origin.stat()
    return f"{origin}:{stat.st_size}:{stat.st_mtime_ns}"


def read_cached(folder: Path, key: str) -> str | None:
    """Return the cached HTML of ``key``, or None when it is absent, unreadable or damaged."""
    try:
        data = (folder / f"{key}.html").read_bytes()
    except OSError:
        return None
    check, _, body = data.partition(b"\n")
    if check.decode("ascii", "replace") != hashlib.sha256(body).hexdigest():
        log.debug("ignoring a damaged inline cache entry %s", key)
        return None
    return body.decode("utf-8")


def write_cached(folder: Path, key: str, inlined: str) -> None:
    """Store the inlined HTML atomically (temporary file, then rename); give up quietly on any error."""
    body = inlined.encode("utf-8")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body)
            os.replace(temporary, folder / f"{key}.html")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        prune(folder, CACHE_KEEP)
    except OSError as exc:
        log.debug("cannot write the inline cache in %s: %s", folder, exc)


def prune(folder: Path, keep: int) -> None:
    """Remove all but the ``keep`` most recently written entries."""
    entries = sorted(folder.glob("*.html"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


class _Deferred(types.ModuleType):
    """Stands in for a module until an attribute of it is used, then imports the real one."""

    def __getattr__(self, name: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def import_premailer() -> types.ModuleType:
    """Import premailer without importing requests (about 40 ms), which it uses only to fetch external CSS.

    premailer's module does ``import requests`` at the top whatever the options, and only
    touches it to download stylesheets, which ``allow_network=False`` never does. While it
    loads, a ``_Deferred`` stands in for requests; the stand-in leaves ``sys.modules`` at
    once, so any other ``import requests`` gets the real module, and premailer's reference
    imports it if it is ever used. (``importlib.util.LazyLoader`` cannot do this on Python
    3.11: the import system reads the lazy module's ``__spec__``, which loads it.)
    """
    if "premailer" in sys.modules or "requests" in sys.modules:
        return importlib.import_module("premailer")
    stand_in = _Deferred("requests")
    sys.modules["requests"] = stand_in
    try:
        return importlib.import_module("premailer")
    finally:
        if sys.modules.get("requests") is stand_in:
            del sys.modules["requests"]
