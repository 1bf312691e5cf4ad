"""A stream far larger than aiohttp's read buffer, sent in one write: the run's lean client
(``client.wire``) and the aiohttp protocol sink (``SinkResponseHandler``, which skips aiohttp's resume
call after each read when reading was not paused)
gets every chunk and agrees with the plain ``readany`` session; the request goes out as the bytes
``body_bytes`` builds. (The sink drains each block as it is parsed, so the buffer stays below aiohttp's
high-water mark and reading is never paused; a paused connection takes aiohttp's full resume path.)"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from agentperf_kit.agents import RequestPlan
from agentperf_kit.client.bodies import body_bytes
from agentperf_kit.client.http import Endpoint, open_session, send_request
from agentperf_kit.trajectories.model import Turn
from tests.sse_servers import SSEServer

N_TOKENS = 30_000


def _script(i: int, body: dict) -> bytes:
    chunk = {"id": "c", "object": "text_completion", "model": "m"}
    lines = []
    for k in range(N_TOKENS):
        fin = "length" if k == N_TOKENS - 1 else None
        choice = {"index": 0, "text": f" t{k % 10}", "logprobs": None, "finish_reason": fin}
        lines.append(b"data: " + json.dumps({**chunk, "choices": [choice]}).encode() + b"\n\n")
    usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": N_TOKENS, "total_tokens": 0}
    lines.append(b"data: " + json.dumps({**chunk, "choices": [], "usage": usage}).encode() + b"\n\n")
    lines.append(b"data: [DONE]\n\n")
    return b"".join(lines)


@pytest.mark.parametrize("wire", [True, False])
def test_a_huge_burst_through_the_sink_is_read_whole(wire):
    async def main():
        server = await SSEServer(script=_script).start()
        try:
            ep = Endpoint(server.base_url, "m", api="completions", stall_timeout_s=30)
            plan = RequestPlan(0, 0, "t", 0, Turn(0, 0, 100, N_TOKENS), 0, "1" * 32, True, 0.0)
            async with open_session(4, wire=wire) as s:
                sink = await send_request(s, ep, plan, body_bytes(ep, plan), 0)
            async with aiohttp.ClientSession() as s:
                plain = await send_request(s, ep, plan, ep.body(plan), 0)
            return sink, plain
        finally:
            await server.stop()

    sink, plain = asyncio.run(main())
    assert sink.ok, (sink.error, sink.error_detail)
    assert sink.n_chunks == plain.n_chunks == N_TOKENS
    assert sink.output_tokens == plain.output_tokens == N_TOKENS
    assert sink.prompt_tokens == sink.target_prompt_tokens == 116 == plain.target_prompt_tokens
    assert sink.finish_reason == "length"
