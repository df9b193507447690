"""Mail on the wire: the SMTP transport, the DATA encoding, and the outbox that stands in for a server."""
