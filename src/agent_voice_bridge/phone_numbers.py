"""Caller IDs, strictly: an E.164 phone number, or not a phone number at all.

The allowlist, the blocklist, rate limits and memory across calls all key on the caller's number, and the
caller's number is whatever the far end put in Twilio's ``From``. Keeping every digit of that string made
``client:mallory15550001111`` and ``sip:…1111@attacker`` equal to ``+15550001111``; a number must be written
as one (a ``+``, a country code, digits, with spaces, dashes, dots or brackets at most) and be a possible
number for its country (``phonenumbers``, Google's libphonenumber), and SIP or client identities are never
equal to one. Withheld caller IDs reach Twilio webhooks as keypad spellings of ANONYMOUS, RESTRICTED,
BLOCKED and UNKNOWN: numbers in form, nobody's in fact.
"""

from __future__ import annotations

import re

import phonenumbers

WITHHELD = frozenset({"+266696687", "+7378742833", "+2562533", "+8656696"})
"""ANONYMOUS, RESTRICTED, BLOCKED, UNKNOWN on a phone keypad: what Twilio's ``From`` holds for a hidden caller ID."""

_WRITTEN_AS_NUMBER = re.compile(r"\+[0-9][0-9 ().\-]*")


def e164(text: str) -> str | None:
    """``+15551234567`` for a phone number written in E.164, else None (SIP, client, withheld, garbage)."""
    text = text.strip()
    if len(text) > 32 or not _WRITTEN_AS_NUMBER.fullmatch(text):
        return None
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    formatted = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return None if formatted in WITHHELD else formatted

