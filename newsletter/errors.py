"""The exceptions a user can cause; the CLI turns each into one line and exit status 1."""


class NewsletterError(Exception):
    """A problem the user can fix: bad configuration, bad data, a busy lock."""

    exit_code = 1


class ConfigError(NewsletterError):
    """The configuration file or an environment variable is invalid."""


class EventDataError(NewsletterError):
    """The event library cannot be used for the requested date."""


class NoEventError(EventDataError):
    """No event exists for the requested date."""


class SubscriberError(NewsletterError):
    """The subscriber list cannot be read."""


class DeliveryError(NewsletterError):
    """Sending cannot start or cannot go on (lock held, server unreachable)."""


class RelayDown(DeliveryError):
    """The SMTP server cannot be used now (unreachable, TLS or AUTH refused): rows stay pending, exit status 3."""

    exit_code = 3


class StorageError(NewsletterError):
    """The state database cannot be read or written (disk full, read-only folder, not a database)."""
