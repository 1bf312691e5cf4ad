"""Per-request and per-event client costs in isolation (issue 18), as CPU time (``time.process_time``,
best of several repeats, so a loaded machine inflates them less than wall-clock figures):

- building one request body: ``encode_body(endpoint.body(plan))`` (the dict + ``json.dumps`` path) vs
  ``body_bytes(endpoint, plan)`` (what a run sends), ``completions`` and ``chat``, 1,000- and 26,000-token
  prompts;
- ``StreamState.feed`` per event on a block of 250 vLLM-shaped completion chunks (the fast parser);
- the lean client's ``WireResponse.data`` (chunked framing + SSE) per event: one chunk per block (workload
  B), 250 chunks per block, and a whole 1,024-token response in one block (workload A's usual block).

    python benchmarks/client_micro.py
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from agentperf_kit.agents import RequestPlan
from agentperf_kit.client.bodies import body_bytes
from agentperf_kit.client.http import Endpoint, StreamState, encode_body
from agentperf_kit.trajectories.model import Turn


def _best(fn, reps: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        for _ in range(reps):
            fn()
        best = min(best, (time.process_time() - t) / reps)
    return best


def main() -> None:
    print(f"python {sys.version.split()[0]}, load average (1 min) {os.getloadavg()[0]:.2f}")
    for api in ("completions", "chat"):
        ep = Endpoint("http://127.0.0.1:1/v1", "model", api=api, tokens_per_word=1.15, overhead_tokens=20)
        for n_in in (1000, 26000):
            plans = [
                RequestPlan(0, 0, "t", 0, Turn(0, 0, n_in, 300), 0, f"{(10**31 + 7919 * i):032d}", True, 0.0)
                for i in range(8)
            ]
            it = itertools.cycle(plans)
            reps = 200 if n_in == 1000 else 20
            old = _best(lambda ep=ep, it=it: encode_body(ep.body(next(it))), reps)
            new = _best(lambda ep=ep, it=it: body_bytes(ep, next(it)), reps)
            size = len(body_bytes(ep, plans[0]))
            print(
                f"body {api:11s} {n_in:>6,}-token prompt ({size / 1e3:.0f} KB): dict + json.dumps "
                f"{old * 1e3:.3f} ms, body_bytes {new * 1e3:.3f} ms"
            )
    ev = (
        b'data: {"id":"cmpl-1","object":"text_completion","created":1700000000,"model":"fast","choices":'
        b'[{"index":0,"text":" tok","logprobs":null,"finish_reason":null,"stop_reason":null}]}\n\n'
    )
    block = ev * 250
    st = StreamState(True, None)
    st.feed(ev, 0)
    per = _best(lambda: st.feed(block, 1), 400, repeats=7) / 250
    print(f"StreamState.feed (fast parser): {per * 1e9:.0f} ns per event (blocks of 250 events)")
    one = StreamState(True, None)
    one.feed(ev, 0)
    one.feed(ev, 0)
    per = _best(lambda: one.feed(ev, 1), 20000, repeats=7)
    print(f"StreamState.feed (fast parser): {per * 1e9:.0f} ns per event (one event per block)")
    _wire(ev)


def _wire(ev: bytes) -> None:
    """The run's lean client (``client.wire``): response framing + SSE per event, chunked encoding."""
    import asyncio

    from agentperf_kit.client.wire import WireResponse

    class _Conn:  # what a response needs of its connection
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def done(self, resp: WireResponse) -> None:
            pass

        def drop(self, resp: WireResponse) -> None:
            pass

    loop = asyncio.new_event_loop()
    chunk = b"%x\r\n%s\r\n" % (len(ev), ev)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    from agentperf_kit.client.wire import _Conn as WireConn

    st = StreamState(True, None)
    conn = object.__new__(WireConn)  # a connection without a socket: only data_received is used
    conn.resp = WireResponse(_Conn(loop), st)  # type: ignore[arg-type]
    conn.resp.data(head + chunk, 0)
    conn.resp.data(chunk, 0)
    per = _best(lambda: conn.data_received(chunk), 20000, repeats=7)
    print(f"wire: _Conn.data_received, one chunk per block (workload B): {per * 1e9:.0f} ns per event")
    for per_block, reps in ((1, 20000), (250, 80)):
        st = StreamState(True, None)
        resp = WireResponse(_Conn(loop), st)  # type: ignore[arg-type]
        resp.data(head + chunk, 0)
        resp.data(chunk, 0)
        block = chunk * per_block
        per = _best(lambda resp=resp, block=block: resp.data(block, 1), reps, repeats=7) / per_block
        print(
            f"wire: WireResponse.data (chunked framing + StreamState.feed): {per * 1e9:.0f} ns per event "
            f"({per_block} chunk{'s' if per_block > 1 else ''} per block)"
        )
    # workload A's usual block: a whole response (headers, 1,024 token chunks, finish, usage, [DONE])
    fin = ev.replace(b'"finish_reason":null', b'"finish_reason":"length"')
    usage = b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":1024}}\n\n'
    events = [ev] * 1023 + [fin, usage, b"data: [DONE]\n\n"]
    whole = head + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
    whole += b"0\r\n\r\n"

    def one_response() -> None:
        st = StreamState(True, None)
        WireResponse(_Conn(loop), st).data(whole, 1)  # type: ignore[arg-type]
        assert st.done and st.n_chunks == 1024

    per = _best(one_response, 20, repeats=7) / 1024
    print(
        f"wire: WireResponse.data, a whole 1,024-token response in one block (workload A): "
        f"{per * 1e9:.0f} ns per event"
    )
    loop.close()


if __name__ == "__main__":
    main()
