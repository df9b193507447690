"""Subscribers: who receives the newsletter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subscriber:
    email: str  # as validated (normalized by email-validator); dedup key is email.lower()
    name: str = ""
    timezone: str = ""  # IANA zone or "" for the newsletter's zone
