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

A new edition (the first run of a day) still runs premailer, but not cssutils' parse of our
own stylesheet: ``styles.json`` beside the entries keeps what premailer derived from it
(its rules, and the declaration lists it parsed with cssutils), under the same code stamp,
and hands them back to premailer's own caches before it runs, so it parses only CSS it has
not seen before.

The cache is a convenience, never state: it is written only into a state folder that exists
already (a dry run on a fresh install creates nothing), atomically, and any problem reading
or writing it (a read-only folder, a damaged file) falls back to inlining.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import pickle
import sys
import tempfile
import types
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache

log = logging.getLogger(__name__)

CACHE_FOLDER = Path("cache") / "inline"  # under paths.state
CACHE_KEEP = 64  # entries kept; the oldest go when a new one is written
TEMPLATES_FOLDER = Path("cache") / "templates"  # under paths.state: Jinja2's compiled templates
STYLES_FILE = "styles.json"  # in the cache folder: premailer's parse of our stylesheets
STYLES_LIMIT = 2000  # declaration lists kept (and a 100th as many stylesheets); past it the file starts afresh
LIBRARIES = ("premailer", "cssutils", "cssselect", "lxml")  # whose versions can change the output


def inline(html: str, templates: Path, state_dir: Path | None = None) -> str:
    """Return ``html`` with email.css inlined and media.css in a <style> block, from the cache when it has it."""
    css = (templates / "email" / "email.css").read_text(encoding="utf-8")
    media = (templates / "email" / "media.css").read_text(encoding="utf-8")
    key = cache_key(html, css, media)
    folder = state_dir / CACHE_FOLDER if state_dir is not None else None
    if folder is not None and (cached := read_cached(folder, key)) is not None:
        return cached
    writable = folder is not None and state_dir is not None and state_dir.is_dir()
    styles = Styles.load(folder / STYLES_FILE) if folder is not None else Styles()
    log.debug("inlining the CSS with premailer (not in the cache yet)")
    inlined = premailer_inline(html, css, media, styles)
    if writable and folder is not None:
        write_cached(folder, key, inlined)
        styles.save(folder / STYLES_FILE)
    return inlined


def template_cache(state_dir: Path | None) -> jinja2.BytecodeCache | None:
    """Jinja2's cache of compiled templates in ``paths.state/cache/templates/``, when the state folder exists.

    Jinja2 keys each entry by the template's name and a checksum of its source (and its
    format by the Python version), and an entry it cannot load is compiled again; the folder
    is made on first use, never the state folder itself. The entries are code, trusted as
    much as the state folder is: only the service's own user should be able to write it.
    """
    if state_dir is None or not state_dir.is_dir():
        return None
    return _QuietBytecodeCache(str(state_dir / TEMPLATES_FOLDER))


class _QuietBytecodeCache(jinja2.FileSystemBytecodeCache):
    """Jinja2's file cache that makes its folder on first write and never fails a render (read-only, full disk)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.pattern = "__jinja2_%s.cache"

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, ValueError, EOFError, pickle.UnpicklingError):  # a damaged file: compile again
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            super().dump_bytecode(bucket)
        except OSError as exc:
            log.debug("cannot write the template cache in %s: %s", self.directory, exc)


def premailer_inline(html: str, css: str, media: str, styles: Styles | None = None) -> str:
    """Inline ``css`` with premailer (offline); keep the @media rules of ``media`` in a <style> block."""
    styles = styles or Styles()
    inliner = _inliner_class()(
        styles,
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
    styles.lend()
    inlined = inliner.transform(pretty_print=False)
    styles.collect()
    return inlined.replace("</head>", f'<style type="text/css">\n{media}</style>\n</head>', 1)


@cache
def _inliner_class() -> type:
    """premailer's Premailer, taking the rules of a stylesheet it has parsed before from ``Styles``."""
    premailer = import_premailer()

    class Inliner(premailer.Premailer):  # type: ignore[misc,name-defined]
        def __init__(self, styles: Styles, html: str, **options: object) -> None:
            super().__init__(html, **options)
            self.styles = styles

        def _parse_style_rules(self, css_body: str, ruleset_index: int) -> tuple[list, list]:
            known = self.styles.rules.get(f"{ruleset_index}:{_sha(css_body)}")
            if known is not None:
                return [(tuple(sp), sel, bulk) for sp, sel, bulk in known[0]], [tuple(x) for x in known[1]]
            rules, leftover = super()._parse_style_rules(css_body, ruleset_index)
            if all(isinstance(x, tuple) for x in leftover):  # @media rules are cssutils objects: not kept
                self.styles.rules[f"{ruleset_index}:{_sha(css_body)}"] = (rules, leftover)
                self.styles.changed = True
            return rules, leftover

    return Inliner


class Styles:
    """What premailer derived from our CSS with cssutils: rules per stylesheet, declaration lists per text.

    The declaration lists are premailer's ``csstext_to_pairs`` results; they are lent to its
    own memo (a cachetools cache, through the decorator's ``cache`` and ``cache_key``) before
    a run and collected from it after, so premailer itself decides when it needs one.
    """

    def __init__(self, rules: dict | None = None, pairs: dict | None = None) -> None:
        self.rules: dict[str, tuple[list, list]] = rules or {}
        self.pairs: dict[tuple[str, bool | None], list[tuple[str, str]]] = pairs or {}
        self.changed = False

    @classmethod
    def load(cls, path: Path) -> Styles:
        """Read the file when it was written by this code and these library versions, else start empty."""
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict) or data.get("stamp") != _sha(_code_stamp()):
            return cls()
        try:
            pairs = {(text, validate): [tuple(p) for p in value] for text, validate, value in data["pairs"]}
            return cls(dict(data["rules"]), pairs)
        except (KeyError, TypeError, ValueError):
            return cls()

    def save(self, path: Path) -> None:
        """Write the file atomically when this run learnt something; give up quietly on any error."""
        if not self.changed:
            return
        if len(self.pairs) > STYLES_LIMIT or len(self.rules) > STYLES_LIMIT // 100:
            self.rules, self.pairs = {}, {}  # edited stylesheets pile up: start afresh (the next run relearns)
        pairs = [[text, validate, value] for (text, validate), value in self.pairs.items()]
        data = json.dumps({"stamp": _sha(_code_stamp()), "rules": self.rules, "pairs": pairs})
        try:
            _write_atomically(path, data.encode("utf-8"))
        except OSError as exc:
            log.debug("cannot write %s: %s", path, exc)

    def lend(self) -> None:
        """Put the known declaration lists into premailer's memo."""
        memo = _pairs_memo()
        if memo is None:
            return
        with memo.cache_lock:
            for (text, validate), value in self.pairs.items():
                key = memo.cache_key(text) if validate is None else memo.cache_key(text, validate=validate)
                memo.cache[key] = value

    def collect(self) -> None:
        """Take the declaration lists premailer parsed in this run from its memo."""
        memo = _pairs_memo()
        if memo is None:
            return
        with memo.cache_lock:
            items = list(memo.cache.items())
        for key, value in items:
            text = key[0] if isinstance(key, tuple) and key and isinstance(key[0], str) else None
            if text is None or not _is_pairs(value):
                continue  # the memo is shared with premailer's parsed sheets and selectors
            for validate in (None, False, True):
                probe = memo.cache_key(text) if validate is None else memo.cache_key(text, validate=validate)
                if probe == key and (text, validate) not in self.pairs:
                    self.pairs[(text, validate)] = value
                    self.changed = True


def _pairs_memo() -> Any:
    """premailer's memoized ``csstext_to_pairs``, if it still is a cachetools wrapper."""
    from premailer import merge_style

    memo = merge_style.csstext_to_pairs
    return memo if all(hasattr(memo, a) for a in ("cache", "cache_key", "cache_lock")) else None


def _is_pairs(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    )


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
        _write_atomically(folder / f"{key}.html", hashlib.sha256(body).hexdigest().encode("ascii") + b"\n" + body)
        prune(folder, CACHE_KEEP)
    except OSError as exc:
        log.debug("cannot write the inline cache in %s: %s", folder, exc)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
