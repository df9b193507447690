"""DKIM: every message is signed, List-Unsubscribe headers included, and the signature verifies."""

import base64
from datetime import UTC, date, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter.errors import ConfigError
from newsletter.events import load_events
from newsletter.render import render_edition
from newsletter.selection import select_edition
from newsletter.subscribers import Subscriber


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    folder = tmp_path_factory.mktemp("dkim")
    pem = folder / "private.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture
def signed_settings(make_settings, event_folder, keypair):
    toml = f'[dkim]\ndomain = "example.org"\nselector = "news"\nprivate_key = "{keypair[0]}"\n'
    return make_settings(toml, events=event_folder)


ADA = Subscriber("ada@example.com", "Ada")


def message_for(settings, subscriber=ADA):
    edition = select_edition(date(2026, 6, 24), load_events(settings.paths.events))
    return render_edition(edition, settings, now=datetime(2026, 6, 24, 7, tzinfo=UTC)).message_for(subscriber)


def test_messages_are_signed_and_verify_with_the_public_key(signed_settings, keypair):
    data = message_for(signed_settings)
    assert data.startswith(b"DKIM-Signature:")

    def dns(name, timeout=5):
        assert name == b"news._domainkey.example.org."
        return keypair[1]

    assert dkim.verify(data, dnsfunc=dns)


def test_the_signature_covers_the_unsubscribe_headers(signed_settings):
    header = message_for(signed_settings).split(b"\r\n\r\n", 1)[0].decode()
    signature = header.split("DKIM-Signature:", 1)[1].split("\r\nTo:", 1)[0]
    signed = "".join(signature.split()).split("h=", 1)[1].split(";", 1)[0].lower().split(":")
    for name in ("from", "to", "subject", "message-id", "list-unsubscribe", "list-unsubscribe-post"):
        assert name in signed


def test_a_tampered_message_fails_verification(signed_settings, keypair):
    data = message_for(signed_settings).replace(b"unsubscribe?token=", b"unsubscribe?token=x")
    assert not dkim.verify(data, dnsfunc=lambda name, timeout=5: keypair[1])


def test_unsigned_without_dkim_settings(settings):
    assert not message_for(settings).startswith(b"DKIM-Signature:")


def test_an_unreadable_key_is_a_clear_error(make_settings, event_folder, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    settings = make_settings(
        f'[dkim]\ndomain = "example.org"\nselector = "s"\nprivate_key = "{bad}"\n', events=event_folder
    )
    with pytest.raises(ConfigError, match="is not a usable PEM private key"):
        message_for(settings)
