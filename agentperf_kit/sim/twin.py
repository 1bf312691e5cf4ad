"""Digital twin of a measured server: a fitted linear step-time model, its preset file and its engine.

A twin preset (``twin.toml``, written by ``agentperf profile``) describes one real server as the simulator
needs it: engine limits (largest batch, prefill chunk, KV capacity in tokens) and a **fitted step-time
model** in place of the roofline. One engine step that runs ``B`` decoding sequences (whose contexts sum
to ``C`` tokens) and prefill chunks of ``P`` new tokens in total (``A`` attention pairs, ``K`` KV tokens
read by the chunks) has a memory-side part ``M`` and a prefill-compute part ``X`` (seconds)::

    M = mem_s + decode_seq_s * B + context_token_s * (C + K)
    X = prefill_token_s * P + prefill_pair_s * A
    t = step_s + admit_s * N + finish_s * F + max(M, X) + (1 - overlap) * min(M, X)

``N`` is the number of requests the step admits (their first scheduling: a server's per-request work in
its engine loop, e.g. slot or sequence set-up, sampling and detokeniser state, which every stream decoding
in that step waits for; the profile's mixed steps measure it, twin files written before it load with 0).
``F`` is the number of requests that finish in the step (their last token): a server's per-request work
at the end in its engine loop (freeing the slot or blocks, saving the prompt to its cache), which the
finishing stream's end and the next step of every other stream wait for. ``end_s`` is the part of a
request's end that only it waits for (the final usage chunk and the stream's close, in a front end that
runs beside the engine): the simulator reports each request's end that much after its last step. The
profile's short streams alone carry one of each, short streams arriving among decoding ones one
``finish_s`` and no ``end_s`` (the streams beside it do not wait for its close), which tells them apart;
older twin files load with 0. ``release_s`` is engine-loop work after a request's end has been reported
(llama.cpp releases the slot after the final chunk is sent): the other streams' next step waits for it,
the finished request does not. The isolated probes cannot see it apart from ``finish_s``; the in-situ
fit (:mod:`agentperf_kit.twin.insitu`) can, from the other requests' ends during a stream.
``queued_step_s`` is added to every step taken while a request that has arrived waits for admission (no
free slot or KV): llama.cpp's server runs its decode steps slower while requests queue for its slots
(measured on the real one, ``benchmarks/twin_queue_drag.py``: 4 streams at a median 870 tok/s each with
no request waiting, 575 with 30 and 502 with 100 waiting, 0.6-0.8 ms more a step; docs/simulator.md).
Only the in-situ fit sees it (the isolated probes never queue).

``overlap`` (0..1) is the share of the smaller part hidden under the larger one when a step carries
both (a GPU streams weights and KV while its tensor cores run the prefill; the roofline engine's
``overlap`` of compute and memory); with ``overlap`` = 0 the two parts add and ``step_s + mem_s`` is the
fixed cost of a step (the linear form of twin files written before ``mem_s`` and ``overlap`` existed,
which load unchanged). A pure decode step is ``step_s + M``; a pure prefill step ``step_s + X + (1 -
overlap) x (mem_s + context_token_s x K)`` once X is the larger part. ``C``, ``A`` and ``K`` have the
roofline engine's definitions (:meth:`agentperf_kit.sim.engine.Engine.step_time`). ``request_s`` (from
the fit) is the fixed cost of one request the engine does not see (HTTP round trip, request set-up): the
simulator delays each request's arrival at the engine by it, so it is part of every simulated TTFT.

**Server noise.** A real server's speed varies over time (other processes, the OS, its own threads): the
profile's repeated short streams (identical work) differ by tens of percent on a shared host (the profiles
in docs/simulator.md), and a tier's P25 speed and P95 TTFT sit in that spread. A twin file may carry
``[noise]``: ``step_factors``, the measured / fitted ratios of those streams divided by their median (so
the fit keeps the level and the noise only the spread), and ``hold_s``, the median stream's duration. The
twin's engine multiplies every step (and finish) by a factor drawn from ``step_factors`` and held for
``hold_s`` of virtual time, then drawn again (a fixed seed: a sweep is reproducible); without ``[noise]``
every factor is 1.

Each coefficient carries its standard error from the least-squares fit (:mod:`agentperf_kit.twin.fit`);
the efficiency sets of a sweep map to the band: ``mid`` = the point estimate, ``low`` = every time
coefficient at its slow end (estimate + ``z`` x SE) and ``overlap`` at estimate - ``z`` x SE, ``high`` =
at their fast ends (estimate / (1 + ``z`` x SE / estimate), overlap + ``z`` x SE); a time coefficient
estimated at 0 spans 0 .. ``z`` x SE, ``overlap`` stays within 0..1 (:func:`_band`).

``agentperf sweep --target sim:PATH.toml`` resolves such a file through
:func:`agentperf_kit.sim.presets.get_deployment`; :func:`agentperf_kit.sim.disagg.make_engine` gives it a
:class:`TwinEngine`.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .engine import Engine
from .presets import Deployment, Efficiency

__all__ = [
    "SHAPE",
    "TERMS",
    "StepModel",
    "TwinDeployment",
    "TwinEngine",
    "dump_toml",
    "is_twin_path",
    "load_twin",
]

TWIN_KIND = "agentperf-twin"
# coefficient names, in seconds per unit: step, prefill token, decode sequence, context token, prefill pair,
# admitted request, finished request, a request's own end, a finished request's release, step while a
# request waits for admission (the work amounts
# an observation carries, :mod:`agentperf_kit.twin.fit`; ``step_s`` stays first: the fit scales the
# overlap form's ``mem_s`` by it)
TERMS = (
    "step_s",
    "prefill_token_s",
    "decode_seq_s",
    "context_token_s",
    "prefill_pair_s",
    "admit_s",
    "finish_s",
    "end_s",
    "release_s",
    "queued_step_s",
)
# the shape terms of the mixed-step form: memory-side seconds per step, overlap share (0..1)
SHAPE = ("mem_s", "overlap")


@dataclass(frozen=True, slots=True)
class StepModel:
    """Fitted step-time coefficients (seconds per step / prefill token / decode sequence / context token
    read / prefill attention pair / admitted request / finished request / a request's own end / a
    finished request's release / step while a request waits for admission, memory-side seconds per
    step, overlap share 0..1);
    the form is in the module docstring."""

    step_s: float
    prefill_token_s: float = 0.0
    decode_seq_s: float = 0.0
    context_token_s: float = 0.0
    prefill_pair_s: float = 0.0
    admit_s: float = 0.0
    finish_s: float = 0.0
    end_s: float = 0.0
    release_s: float = 0.0
    queued_step_s: float = 0.0
    mem_s: float = 0.0
    overlap: float = 0.0

    def parts(self, prefill: float, decode_seqs: float, context: float, pairs: float) -> tuple[float, float]:
        """(memory-side seconds ``M``, prefill-compute seconds ``X``) of one step."""
        m = self.mem_s + self.decode_seq_s * decode_seqs + self.context_token_s * context
        return m, self.prefill_token_s * prefill + self.prefill_pair_s * pairs

    def time(self, prefill: float, decode_seqs: float, context: float, pairs: float) -> float:
        """Seconds for one step (see the module docstring for the terms)."""
        return self.time_slope(prefill, decode_seqs, context, pairs)[0]

    def time_slope(
        self, prefill: float, decode_seqs: float, context: float, pairs: float
    ) -> tuple[float, float]:
        """(seconds for one step, d seconds / d context token)."""
        m, x = self.parts(prefill, decode_seqs, context, pairs)
        hidden = 1.0 - self.overlap
        if m >= x:
            return self.step_s + m + hidden * x, self.context_token_s
        return self.step_s + x + hidden * m, hidden * self.context_token_s

    def as_dict(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class TwinDeployment(Deployment):
    """A :class:`Deployment` whose step time is a fitted :class:`StepModel` (one per efficiency set)."""

    twin_path: str = ""
    cache_block_tokens: int = 16  # the server's prefix-cache granularity (tokens; 1: token by token)
    host_cache_tokens: int = 0  # prompts kept in host memory beyond the KV capacity (tokens; 0: none)
    prefix_caching: bool = True  # False: the server reuses no prefix (every prompt prefilled in full)
    # True: the server keeps one prompt per slot (llama.cpp without --cache-ram): the idle cached prompts and
    # the running requests together never outnumber its max_num_seqs slots (a new prompt takes the least
    # recently used idle slot's)
    slot_prompt_cache: bool = False
    request_s: float = 0.0  # fixed cost of a request the engine does not see (s): delays its arrival
    noise_factors: tuple[float, ...] = ()  # server noise: step-time factors to draw from (module doc)
    noise_hold_s: float = 0.0  # virtual seconds a drawn factor holds
    step_mid: StepModel | None = None
    step_low: StepModel | None = None
    step_high: StepModel | None = None

    def step_model(self, efficiency: str) -> StepModel:
        """The coefficients for efficiency set ``low`` (slow end of the band), ``mid`` or ``high``."""
        m = {"low": self.step_low, "mid": self.step_mid, "high": self.step_high}.get(efficiency)
        if m is None:
            raise ConfigError(f"efficiency must be low, mid or high for a twin, got {efficiency!r}")
        return m


class TwinEngine(Engine):
    """The simulated engine with the twin's fitted step time instead of the roofline."""

    def __init__(self, dep: TwinDeployment, eff: Efficiency, *args: Any, **kwargs: Any) -> None:
        super().__init__(dep, eff, *args, **kwargs)
        self.model = dep.step_model(eff.name)
        self._factors = tuple(dep.noise_factors)
        self._hold = float(dep.noise_hold_s)
        self._noisy = bool(self._factors) and self._hold > 0
        self._rng = random.Random(20261201)
        self._f = 1.0  # the server-noise factor in force
        self._f_until = -math.inf if self._noisy else math.inf  # virtual time it holds until
        if self.model.end_s:  # each request's end is reported end_s (times the noise) after its last step
            report, end_s = self.on_finish, self.model.end_s

            def on_finish(req: Any, t: float) -> None:
                report(req, t + end_s * (self._f if self._noisy else 1.0))

            self.on_finish = on_finish

    def _factor(self) -> float:
        """The server-noise factor at the engine's clock (a new draw once the last one's hold is over)."""
        if self.now >= self._f_until:
            self._f = self._rng.choice(self._factors)
            self._f_until = self.now + self._hold
        return self._f

    def _step(
        self, tokens: float, n_dec: float, q: float, ctx: float, pairs: float, pkv: float
    ) -> tuple[float, float]:
        """(step seconds, d seconds / d decode context): ``tokens`` = ``n_dec`` decoding sequences x ``q``
        queries each + prefill tokens; ``ctx`` the decode context sum, ``pkv`` the KV tokens the prefill
        chunks read, ``pairs`` their attention pairs (the engine's seam for every step it times); plus
        ``admit_s`` for each request the step admits (``Engine.step_admits``) and ``queued_step_s`` while
        a request waits for admission; times the server-noise factor in force."""
        t, slope = self.model.time_slope(max(0.0, tokens - n_dec * q), n_dec, ctx + pkv, pairs)
        t += self.model.admit_s * self.step_admits + self._queued_s()
        if self._noisy:
            f = self._factor()
            return t * f, slope * f
        return t, slope

    def _advance_decode(self, limit: float) -> None:
        # a decode segment ends where the noise factor is drawn again (the next segment runs at the new one)
        if self._noisy:
            self._factor()
            limit = min(limit, self._f_until)
        super()._advance_decode(limit)

    def _finish_due(self) -> None:
        """The requests whose last token this step made finish ``finish_s`` each later (their end and the
        next step of the others wait for it; the engine's finishes all pass here), and the others' next
        step waits ``release_s`` each more after their ends."""
        heap, g = self._decode, self.g
        m = self.model
        n = (
            sum(1 for e in heap if e[0] <= g)
            if (m.finish_s or m.release_s) and heap and heap[0][0] <= g
            else 0
        )
        if n and m.finish_s:
            dt = m.finish_s * n
            if self._noisy:
                dt *= self._factor()
            self.now += dt
            self.busy_s += dt
        super()._finish_due()
        if n and m.release_s:  # after their ends were reported: only the others' next step waits
            dt = m.release_s * n * (self._factor() if self._noisy else 1.0)
            self.now += dt
            self.busy_s += dt

    def _queued_s(self) -> float:
        """``queued_step_s`` when a request that has arrived waits for admission, else 0 (a decode segment
        keeps the state it starts with: admissions happen at finishes and arrivals, which end segments)."""
        q = self.model.queued_step_s
        if q:
            w = self.waiting
            if w and w[0].t_arrival <= self.now:
                return q
        return 0.0

    def _decode_parts(self, b: int, ctx: float) -> tuple[float, float]:
        """Pure decode of ``b`` sequences at context sum ``ctx``: (step seconds, d seconds / d context),
        the seam the engine's decode segments and ``decode_step_time`` read (plus ``queued_step_s`` while
        a request waits; times the noise factor)."""
        t, slope = self.model.time_slope(0.0, b, ctx, 0.0)
        t += self._queued_s()
        if self._noisy:
            f = self._factor()
            return t * f, slope * f
        return t, slope


def is_twin_path(name: str) -> bool:
    """Whether a ``sim:NAME`` target names a twin preset file (a path ending in ``.toml``)."""
    return str(name).lower().endswith(".toml")


def _band(point: StepModel, se: dict[str, float], z: float, sign: int) -> StepModel:
    """One end of the band: each time coefficient ``c`` with standard error ``s`` moved to its upper 95 %
    bound ``c + z s`` (slow end) or to ``c / (1 + z s / c)`` (fast end: the reciprocal counterpart, which
    stays positive, so a step is never free, and equals ``c - z s`` to first order); a coefficient
    estimated at 0 spans 0 .. ``z s``; ``overlap`` moves by ``-+z s`` within 0..1 (less overlap is
    slower). Both ends stay finite however poorly a term is determined (an exponential interval put a
    term with ``s`` = 40 ``c`` at 1e17 ``c``, and a virtual clock at 1e20 s never ends a level)."""
    vals = {}
    for t in (*TERMS, "mem_s"):
        c, s = getattr(point, t), float(se.get(t, 0.0))
        if c > 0:
            vals[t] = c + z * s if sign > 0 else c / (1.0 + z * s / c)
        else:
            vals[t] = z * s if sign > 0 else 0.0
    ov = point.overlap - sign * z * float(se.get("overlap", 0.0))
    vals["overlap"] = min(1.0, max(0.0, ov))
    return StepModel(**vals)


def load_twin(path: str | Path) -> TwinDeployment:
    """Read a twin preset written by ``agentperf profile`` (errors name the file and the fix)."""
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"twin preset {str(path)!r} not found (write one with: agentperf profile --target URL "
            f"--model M --out {path})"
        ) from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"twin preset {str(path)!r} cannot be read: {exc}") from None
    if data.get("kind") != TWIN_KIND:
        raise ConfigError(
            f"{str(path)!r} is not a twin preset (kind = {data.get('kind')!r}, expected {TWIN_KIND!r}); "
            "write one with agentperf profile"
        )
    try:
        eng = data["engine"]
        step = data["step"]
        se = data.get("step_se", {})
        point = StepModel(**{t: float(step.get(t, 0.0)) for t in (*TERMS, *SHAPE)})
        if not 0.0 <= point.overlap <= 1.0:
            raise ValueError(f"step.overlap must be within 0..1, got {point.overlap}")
        z = float(data.get("band", {}).get("z", 1.96))
        count = int(data.get("accelerator_count", 1))
        cap = int(eng["kv_capacity_tokens"])
        return TwinDeployment(
            name=str(path),
            label=str(data.get("label", f"twin of {data.get('model', '?')}")),
            accelerator=str(data.get("accelerator", "unknown")),
            accelerator_count=count,
            model=str(data.get("model", "unknown")),
            model_label=str(data.get("model", "unknown")),
            max_num_seqs=int(eng["max_num_seqs"]),
            max_num_batched_tokens=int(eng["max_num_batched_tokens"]),
            flops_per_s=0.0,
            attn_flops_per_s=0.0,
            bandwidth_bytes_per_s=0.0,
            memory_bytes=0.0,
            weight_bytes=0.0,
            dense_weight_bytes=0.0,
            dense_weight_replicas=1,
            expert_weight_bytes_per_layer=0.0,
            moe_layers=0,
            routed_experts=0,
            experts_per_token=0,
            active_params=0.0,
            kv_bytes_per_token=0.0,
            kv_capacity_tokens=cap,
            max_context_tokens=int(eng.get("max_context_tokens", cap)),
            attn_flops_decode_per_pair=0.0,
            attn_flops_prefill_per_pair=0.0,
            step_overhead_s=point.step_s,
            tdp_w_per_accelerator=float(data.get("tdp_w", 0.0)),
            idle_w_per_accelerator=float(data.get("idle_w", 0.0)),
            projection=False,
            kv_policy=str(eng.get("kv_policy", "preempt")),
            twin_path=str(p),
            cache_block_tokens=max(1, int(eng.get("cache_block_tokens", 16))),
            host_cache_tokens=max(0, int(eng.get("host_cache_tokens", 0))),
            prefix_caching=bool(eng.get("prefix_caching", True)),
            slot_prompt_cache=bool(eng.get("slot_prompt_cache", False)),
            request_s=float(data.get("fit", {}).get("request_s", 0.0)),
            noise_factors=_noise_factors(data.get("noise") or {}),
            noise_hold_s=float((data.get("noise") or {}).get("hold_s", 0.0)),
            step_mid=point,
            step_low=_band(point, se, z, +1),
            step_high=_band(point, se, z, -1),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"twin preset {str(path)!r} is missing or has a bad field: {exc}") from None


def _noise_factors(noise: dict[str, Any]) -> tuple[float, ...]:
    """The ``[noise]`` section's ``step_factors`` (each > 0 and finite, else a ValueError naming it)."""
    out = tuple(float(f) for f in noise.get("step_factors", ()))
    bad = [f for f in out if not (f > 0 and math.isfinite(f))]
    if bad:
        raise ValueError(f"noise.step_factors must be positive and finite, got {bad[0]}")
    return out


# -- a small TOML writer (scalars, lists of scalars, tables, arrays of tables) ----------------------------


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        import json

        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if v is None:
        return '""'
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _value(k)


def dump_toml(data: dict[str, Any], comments: dict[str, str] | None = None) -> str:
    """TOML text of ``data`` (nested dicts become tables, lists of dicts arrays of tables);
    ``comments`` maps a top-level table name to a comment line written above it."""
    comments = comments or {}
    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any], array: bool = False) -> None:
        scalars = {k: v for k, v in d.items() if not _is_table(v)}
        tables = {k: v for k, v in d.items() if _is_table(v)}
        if prefix:
            if prefix in comments:
                lines.append(f"# {comments[prefix]}")
            lines.append(f"[[{prefix}]]" if array else f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{_key(k)} = {_value(v)}")
        lines.append("")
        for k, v in tables.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict):
                table(name, v)
            else:
                for item in v:
                    table(name, item, array=True)

    table("", data)
    return "\n".join(lines).rstrip() + "\n"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))
