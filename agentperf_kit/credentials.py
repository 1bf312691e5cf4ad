"""Request headers and credentials: every header value is a secret unless marked public.

A user gives headers as ``"Name: value"`` strings: ``headers`` (the ``--header`` flag) are *secret* (their
values are sent, never written: manifests, ``sweep.json``, ``summary.json`` and the sweep's config hash see
``Name: ***``, and the values are scrubbed from error details); ``public_headers`` (``--public-header``)
are recorded as given. Names are case-insensitive: the same name twice is refused, and an
``Authorization`` header given while ``api_key_env`` names the key is dropped in favour of the key, with a
warning (two Authorization headers would otherwise be sent).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping

from .errors import ConfigError

__all__ = [
    "MASK",
    "api_key_from_env",
    "dedupe_auth",
    "mask_headers",
    "masked_header_lines",
    "merge_headers",
    "parse_header_lines",
    "secret_values",
]

#: what a secret value is replaced with in every file and message
MASK = "***"


def parse_header_lines(items: Iterable[str] | None, *, what: str = "headers") -> dict[str, str]:
    """``["Name: value", ...]`` as a dict; a malformed item or a name given twice (any case) is refused."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for item in items or ():
        name, sep, value = str(item).partition(":")
        name = name.strip()
        if not sep or not name or any(c.isspace() for c in name):
            raise ConfigError(
                f"{what} item {_masked_item(item)!r}: write it as 'Name: value' "
                "(e.g. 'X-Request-Source: bench')"
            )
        if name.lower() in seen:
            raise ConfigError(
                f"{what}: header {name!r} given twice (as {seen[name.lower()]!r} too); give it once"
            )
        seen[name.lower()] = name
        out[name] = value.strip()
    return out


def _masked_item(item: object) -> str:
    name, sep, _ = str(item).partition(":")
    return f"{name}:{MASK}" if sep else f"{str(item)[:3]}..."  # never echo a value


def merge_headers(
    secret: Iterable[str] | None, public: Iterable[str] | None = None
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Secret and public header lines -> (all headers, names of the public ones); a name in both is
    refused."""
    s = parse_header_lines(secret, what="headers")
    p = parse_header_lines(public, what="public_headers")
    both = sorted({k.lower() for k in s} & {k.lower() for k in p})
    if both:
        raise ConfigError(f"header(s) {', '.join(both)} given both as secret and as public; give each once")
    return {**s, **p}, tuple(p)


def dedupe_auth(headers: Mapping[str, str], api_key_env: str | None) -> dict[str, str]:
    """``headers`` without an ``Authorization`` header when ``api_key_env`` supplies the key (with a
    warning)."""
    out = dict(headers)
    if api_key_env:
        dropped = [k for k in out if k.lower() == "authorization"]
        for k in dropped:
            del out[k]
        if dropped:
            warnings.warn(
                f"an Authorization header was given and api_key_env {api_key_env} names the key: the key "
                "is sent, the header is dropped",
                UserWarning,
                stacklevel=2,
            )
    return out


def mask_headers(headers: Mapping[str, str], public: Iterable[str] = ()) -> dict[str, str]:
    """Headers for a file: every value masked except those of the ``public`` names (any case)."""
    pub = {p.lower() for p in public}
    return {k: (v if k.lower() in pub else MASK) for k, v in headers.items()}


def masked_header_lines(items: Iterable[str]) -> list[str]:
    """Secret ``"Name: value"`` lines with their values masked (``"Name: ***"``)."""
    return [f"{k}: {MASK}" for k in parse_header_lines(items)]


def secret_values(
    headers: Mapping[str, str], public: Iterable[str] = (), key: str | None = None
) -> tuple[str, ...]:
    """The strings to scrub from anything written: secret header values (and their bearer tokens) and
    the API key. Very short values (under 4 characters) are left out: replacing them everywhere would
    mangle numbers and words without protecting anything."""
    pub = {p.lower() for p in public}
    out: list[str] = []
    for k, v in headers.items():
        if k.lower() in pub or len(v) < 4:
            continue
        out.append(v)
        _, _, token = v.partition(" ")
        if token and len(token) >= 4:
            out.append(token.strip())
    if key:
        out.append(key)
    return tuple(sorted(set(out), key=len, reverse=True))


def api_key_from_env(name: str | None) -> str | None:
    """The API key held by environment variable ``name`` (None when no name is given).

    Raises:
        ConfigError: the variable is not set or is empty.
    """
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"api_key_env {name}: the environment variable is {'empty' if value == '' else 'not set'}; "
            f"export {name}=... first, or drop the option for a server without keys"
        )
    return value
