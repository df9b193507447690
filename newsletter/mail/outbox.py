"""The outbox: each recipient's message written as an .eml file instead of being sent."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from newsletter.render import RenderedEdition
from newsletter.subscribers import Subscriber


def write_outbox(rendered: RenderedEdition, subscribers: Iterable[Subscriber], folder: Path) -> int:
    """Write each recipient's message as an .eml file instead of sending; return how many."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for subscriber in subscribers:
        name = "".join(ch if ch.isalnum() or ch in "@._-+" else "_" for ch in subscriber.key)
        path = folder / f"{rendered.edition.day.isoformat()}_{name}.eml"
        temporary = path.with_suffix(".eml.tmp")
        temporary.write_bytes(rendered.message_for(subscriber))
        os.replace(temporary, path)
        count += 1
    return count
