"""The outbox: each recipient's message written as an .eml file instead of being sent."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from newsletter.errors import NewsletterError
from newsletter.render import RenderedEdition
from newsletter.subscribers import Subscriber


def write_outbox(rendered: RenderedEdition, subscribers: Iterable[Subscriber], folder: Path) -> int:
    """Write each recipient's message as an .eml file instead of sending; return how many."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NewsletterError(
            f"{folder}: cannot create the outbox folder: {exc.strerror} (choose another --outbox)"
        ) from exc
    count = 0
    for subscriber in subscribers:
        name = "".join(ch if ch.isalnum() or ch in "@._-+" else "_" for ch in subscriber.key)
        path = folder / f"{rendered.edition.day.isoformat()}_{name}.eml"
        _write(path, rendered.message_for(subscriber))
        count += 1
    return count


def _write(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (temporary file, then rename)."""
    temporary = path.with_suffix(".eml.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise NewsletterError(
            f"{path}: cannot write the message: {exc.strerror} (free some space or choose another --outbox)"
        ) from exc
