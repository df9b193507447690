"""DKIM: every message is signed, List-Unsubscribe headers included, and the signature verifies."""

import base64
from datetime import UTC, date, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter.editions import send_day
from newsletter.errors import ConfigError
from newsletter.events import load_events
from newsletter.render import render_edition
from newsletter.selection import select_edition
from newsletter.signing import relaxed_body
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


@pytest.mark.parametrize(
    "header", [b"List-Unsubscribe: <https://evil.example/unsub>", b"From: Someone <x@evil.example>"]
)
def test_an_added_second_copy_of_a_signed_header_fails_verification(signed_settings, keypair, header):
    """Key headers are signed once more than they occur (RFC 6376 8.15): nobody can slip in a second one."""
    data = message_for(signed_settings)
    signature_end = data.index(b"\r\nTo:") + 2  # the DKIM-Signature header comes first
    tampered = data[:signature_end] + header + b"\r\n" + data[signature_end:]
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: keypair[1])
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: keypair[1])


def test_signed_messages_still_verify_after_delivery_over_smtp(
    make_settings, event_folder, keypair, smtp_server, tmp_path
):
    """The DATA path (dot-stuffing, CRLF) hands the server exactly the bytes that were signed."""
    csv = tmp_path / "subscribers.csv"
    csv.write_text("email,name,timezone\nada@example.com,Ada,\nzoe@example.com,Zoë .Dot,\n", encoding="utf-8")
    toml = (
        f'[dkim]\ndomain = "example.org"\nselector = "news"\nprivate_key = "{keypair[0]}"\n'
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_server.port}\nsecurity = "none"\n'
    )
    settings = make_settings(
        toml, env={"NEWSLETTER_SECRET": "s"}, events=event_folder, subscribers=csv, state=tmp_path / "var"
    )
    assert send_day(settings, date(2026, 6, 24)).delivered == 2
    for received in smtp_server.handler.messages:
        assert dkim.verify(received.data, dnsfunc=lambda name, timeout=5: keypair[1])


@pytest.fixture(scope="module")
def ed25519_pair(tmp_path_factory):
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path_factory.mktemp("ed25519") / "ed25519.pem"
    pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem, b"v=DKIM1; k=ed25519; p=" + base64.b64encode(raw)


def test_with_an_ed25519_key_each_message_carries_both_signatures_and_both_verify(
    make_settings, event_folder, keypair, ed25519_pair
):
    toml = (
        f'[dkim]\ndomain = "example.org"\nselector = "news"\nprivate_key = "{keypair[0]}"\n'
        f'ed25519_key = "{ed25519_pair[0]}"\n'
    )
    data = message_for(make_settings(toml, events=event_folder))
    records = {b"news._domainkey.example.org.": keypair[1], b"news-ed25519._domainkey.example.org.": ed25519_pair[1]}

    def dns(name, timeout=5):
        return records[name]

    assert data.count(b"DKIM-Signature:") == 2
    verifier = dkim.DKIM(data)
    assert verifier.verify(idx=0, dnsfunc=dns) and verifier.signature_fields[b"a"] == b"rsa-sha256"
    assert verifier.verify(idx=1, dnsfunc=dns) and verifier.signature_fields[b"a"] == b"ed25519-sha256"
    tampered = data.replace(b"Subject: ", b"Subject: Re: ")
    assert not dkim.DKIM(tampered).verify(idx=1, dnsfunc=dns)


def test_an_rsa_key_given_as_the_ed25519_key_is_a_clear_error(make_settings, event_folder, keypair):
    toml = (
        f'[dkim]\ndomain = "example.org"\nselector = "news"\nprivate_key = "{keypair[0]}"\n'
        f'ed25519_key = "{keypair[0]}"\n'
    )
    with pytest.raises(ConfigError, match=r"dkim.ed25519_key: .* \(it must be an Ed25519 key\)"):
        message_for(make_settings(toml, events=event_folder))


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"a\r\n", b"a  b \t c  \r\n\r\n\r\n", b"  x\r\n \r\n", b"tab\tinside\r\n"],
)
def test_our_relaxed_canonicalization_is_dkimpys(body):
    from dkim.canonicalization import CanonicalizationPolicy

    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    assert relaxed_body(body) == policy.canonicalize_body(body)


@pytest.mark.parametrize("name", ["", "Ada", "Zoë Ünïcode", ".dot first", "two  spaces", "tab\there", 'Quote "me"'])
def test_the_body_hash_from_pre_canonicalized_segments_equals_canonicalizing_the_message(signed_settings, name):
    import hashlib

    from newsletter.render import join_segments

    edition = select_edition(date(2026, 6, 24), load_events(signed_settings.paths.events))
    rendered = render_edition(edition, signed_settings)
    assert rendered.body_hash is not None, "our templates allow the fast path"
    values = rendered.values_for(Subscriber("ada@example.com", name))
    body = join_segments(rendered.segments, rendered.slots, values).split(b"\r\n\r\n", 1)[1]
    assert rendered.body_hash(values) == base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())


@pytest.mark.parametrize("name", ["", "Ada", "Zoë Ünïcode", ".dot first", "two  spaces", "tab\there", 'Quote "me"'])
def test_the_signed_headers_from_the_canonical_template_equal_canonicalizing_the_message(signed_settings, name):
    from newsletter.render import join_segments
    from newsletter.signing import canonical_headers

    edition = select_edition(date(2026, 6, 24), load_events(signed_settings.paths.events))
    rendered = render_edition(edition, signed_settings)
    assert rendered.signed_headers is not None, "our templates allow the fast path"
    subscriber = Subscriber("ada@example.com", name, public_id=f"{7:032x}")
    values = rendered.values_for(subscriber)
    head = join_segments(rendered.segments, rendered.slots, values).split(b"\r\n\r\n", 1)[0]
    fast = rendered.signed_headers(values)
    assert fast is None or fast == canonical_headers(head)
    assert b"list-unsubscribe:" in canonical_headers(head) and b"to:" in canonical_headers(head)
    if name in ("", "Ada", "Zoë Ünïcode", 'Quote "me"'):
        assert fast is not None, "a clean value takes the fast path"
