"""Preflight: is the target usable? Checked before any agent starts, so a wrong URL, a port with nothing
listening or an unknown model fails in seconds with one clear message instead of a whole window of
failed requests.

Two steps (docs/cli.md):

1. ``GET {base_url}/models``: the server answers at all (a connection error is fatal); 401/403 means the
   credentials are refused (fatal). The model list is read when there is one: a model missing from it is
   reported, and is fatal only if step 2 fails too (some gateways serve aliases they do not list).
2. One short streamed request (``max_tokens`` :data:`PROBE_MAX_TOKENS`, the run's own extra body fields and
   headers, a random prompt so no later prompt shares its prefix): it must answer 200 with an event stream
   and send its first event within ``timeout_s``. Anything else is fatal, with the status and what the
   server said (secrets scrubbed).

Every failure is a :class:`~agentperf_kit.errors.TargetError` naming the URL and the model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets as _random
from typing import Any

import aiohttp
from yarl import URL

from ..errors import TargetError
from .http import Endpoint, scrub

__all__ = ["PROBE_MAX_TOKENS", "check_base_url", "preflight", "preflight_sync"]

log = logging.getLogger(__name__)

#: output tokens asked of the preflight's streamed request
PROBE_MAX_TOKENS = 4

_SKIP = "(preflight; skip it with preflight=False / --no-preflight)"


def check_base_url(url: str, what: str = "target") -> str:
    """``url`` is an absolute http(s) URL with a host (e.g. ``http://127.0.0.1:8000/v1``); returns it.

    Raises:
        TargetError: naming the URL and what is wrong with it.
    """
    try:
        u = URL(url)
        port = u.port  # an out-of-range port raises here
    except (ValueError, TypeError) as exc:
        raise TargetError(
            f"{what} {url!r} is not a valid URL ({exc}); e.g. http://127.0.0.1:8000/v1"
        ) from None
    if u.scheme not in ("http", "https") or not u.host:
        raise TargetError(
            f"{what} {url!r} is not an http(s) URL with a host; give e.g. http://127.0.0.1:8000/v1"
            + (", or sim / sim:NAME / sim:PATH.toml for the simulator" if what == "target" else "")
        )
    if port is not None and not 0 < port < 65536:
        raise TargetError(f"{what} {url!r}: port {port} is out of range 1..65535")
    return url


def _probe_body(endpoint: Endpoint) -> dict[str, Any]:
    word = f"preflight-{_random.token_hex(6)}"
    body: dict[str, Any] = {
        "model": endpoint.model,
        "stream": True,
        "max_tokens": PROBE_MAX_TOKENS,
        "stream_options": {"include_usage": True},
    }
    if endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": f"{word} Reply with one word."}]
    else:
        body["prompt"] = f"{word} Reply with one word."
    body.update(endpoint.extra_body)
    return body


async def preflight(
    endpoint: Endpoint, api_key: str | None = None, *, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Check that ``endpoint`` answers and serves its model (see the module docstring).

    Returns what was learned (``models``: the listed ids or None, ``models_status``, ``probe_status``,
    ``probe_first_event_s``), for a manifest or a log line.

    Raises:
        TargetError: unreachable, refused credentials, unknown model, or no stream; the message names
            the URL, the model and what the server said.
    """
    check_base_url(endpoint.base_url)
    where = f"target {endpoint.base_url} (model {endpoint.model!r})"
    secrets = endpoint.secrets(api_key)
    headers = dict(endpoint.headers)
    if api_key:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {api_key}"
    info: dict[str, Any] = {"models": None}
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, 10.0))
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        # 1. /models
        try:
            async with session.get(f"{endpoint.base_url}/models") as resp:
                info["models_status"] = resp.status
                text = await resp.text(errors="replace")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TargetError(
                f"{where}: cannot reach the server: {scrub(_describe(exc), secrets)}; is it running, and is "
                f"the URL right? {_SKIP}"
            ) from None
        if info["models_status"] in (401, 403):
            raise TargetError(
                f"{where}: GET /models answered {info['models_status']} (credentials refused): "
                f"{scrub(_short(text), secrets)}; check api_key_env / the headers {_SKIP}"
            )
        if info["models_status"] == 200:
            try:
                data = json.loads(text)
                ids = [m.get("id") for m in data.get("data", []) if isinstance(m, dict)]
                info["models"] = [str(i) for i in ids if i is not None]
            except (ValueError, AttributeError, TypeError):
                info["models"] = None
        missing = bool(info["models"]) and endpoint.model not in info["models"]
        # 2. one short streamed request
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        try:
            async with session.post(endpoint.url, json=_probe_body(endpoint)) as resp:
                info["probe_status"] = resp.status
                ctype = resp.headers.get("Content-Type", "")
                if resp.status != 200:
                    text = await resp.text(errors="replace")
                    hint = f"; the server lists {_list(info['models'])}" if missing else ""
                    raise TargetError(
                        f"{where}: a short streamed request to {endpoint.url} answered HTTP {resp.status}: "
                        f"{scrub(_short(text), secrets)}{hint} {_SKIP}"
                    )
                if "text/event-stream" not in ctype:
                    raise TargetError(
                        f"{where}: a streamed request to {endpoint.url} answered 200 with Content-Type "
                        f"{ctype or 'none'}, not text/event-stream; is this an OpenAI-compatible API? {_SKIP}"
                    )
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        info["probe_first_event_s"] = loop.time() - t0
                        break
                else:
                    raise TargetError(f"{where}: the streamed request ended without a data event {_SKIP}")
        except TargetError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TargetError(
                f"{where}: the short streamed request to {endpoint.url} failed: "
                f"{scrub(_describe(exc), secrets)} (limit {timeout_s:g} s) {_SKIP}"
            ) from None
    if missing:
        log.warning(
            "%s: the server's /models does not list the model (it lists %s), but it answered a request "
            "for it; going on",
            where,
            _list(info["models"]),
        )
    return info


def preflight_sync(
    endpoint: Endpoint, api_key: str | None = None, *, timeout_s: float = 30.0
) -> dict[str, Any]:
    """:func:`preflight` from synchronous code (not from inside a running event loop)."""
    return asyncio.run(preflight(endpoint, api_key, timeout_s=timeout_s))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}"


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


def _list(ids: list[str] | None) -> str:
    if not ids:
        return "no models"
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
