"""The application log: addresses masked (``a***@example.com``) unless ``-v`` asks for details."""

from __future__ import annotations

import logging
import re

# the first character of the local part is kept, the rest hidden; the domain stays (it is rarely personal)
ADDRESS = re.compile(r"(?<![\w.+-])([\w!#$%&'*+/=?^`{|}~-])[\w.!#$%&'*+/=?^`{|}~-]*@((?:[\w-]+\.)+[\w-]{2,})")


def mask(text: str) -> str:
    """Mask every email address in a text: 'ada@example.com' -> 'a***@example.com'."""
    return ADDRESS.sub(r"\1***@\2", text)


class MaskAddresses(logging.Filter):
    """Rewrite each record's message with its addresses masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup(verbose: bool) -> None:
    """Log to stderr: our debug details and addresses in clear with -v, else warnings and masked addresses.

    Libraries log their warnings either way, never their debug chatter (markdown-it logs
    every block rule it tries: thousands of lines an edition).
    """
    import sys

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(MaskAddresses())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    if verbose:
        logging.getLogger("newsletter").setLevel(logging.DEBUG)
