"""Accelerator, model and deployment presets, read from the TOML data files in ``presets/``.

Each preset file states its sources and assumptions. ``get_deployment(name)`` resolves a deployment
(accelerator x count x model x engine limits) into a :class:`Deployment` with the derived figures the
engine needs (aggregate peaks and bandwidth, weight bytes, KV capacity in tokens).
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, replace
from functools import cache
from importlib import resources
from typing import Any

from ..errors import UnknownNameError

__all__ = ["DEFAULT_DEPLOYMENT", "Deployment", "Efficiency", "get_deployment", "list_deployments"]

DEFAULT_DEPLOYMENT = "h200x8-dsv4pro"


@cache
def _load(kind: str) -> dict[str, Any]:
    text = resources.files("agentperf_kit.sim").joinpath(f"presets/{kind}.toml").read_text()
    return tomllib.loads(text)


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Roofline utilizations: share of peak FLOP/s and of HBM bandwidth a step achieves."""

    name: str
    compute: float
    bandwidth: float


@dataclass(frozen=True, slots=True)
class Deployment:
    """A resolved deployment; all figures are for the whole system (every accelerator) unless named."""

    name: str
    label: str
    accelerator: str
    accelerator_count: int
    model: str
    model_label: str
    max_num_seqs: int
    max_num_batched_tokens: int
    flops_per_s: float  # aggregate peak at the model's compute precision
    attn_flops_per_s: float  # aggregate peak at the attention precision
    bandwidth_bytes_per_s: float  # aggregate HBM bandwidth
    memory_bytes: float  # aggregate HBM
    weight_bytes: float  # all weights
    dense_weight_bytes: float  # one copy of the non-expert weights, read every step
    dense_weight_replicas: int  # copies read per step: the GPU count under data-parallel attention, else 1
    expert_weight_bytes_per_layer: float  # one routed expert in one layer
    moe_layers: int
    routed_experts: int
    experts_per_token: int
    active_params: float
    kv_bytes_per_token: float
    kv_capacity_tokens: int
    max_context_tokens: int  # the model's context limit (prompt + output)
    attn_flops_decode_per_pair: float
    attn_flops_prefill_per_pair: float
    step_overhead_s: float
    tdp_w_per_accelerator: float
    idle_w_per_accelerator: float
    projection: bool
    kv_policy: str = "preempt"  # "preempt" (vLLM: recompute) or "reserve" (whole output at admission)
    # prefill/decode disaggregation: the two pools (each a Deployment) and the KV transfer bandwidth
    prefill_pool: Deployment | None = None
    decode_pool: Deployment | None = None
    kv_transfer_bytes_per_s: float = 0.0

    @property
    def disaggregated(self) -> bool:
        return self.prefill_pool is not None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_deployments() -> list[str]:
    """Names of the deployment presets."""
    return sorted(k for k in _load("deployments") if k != "efficiency")


def efficiency(name: str) -> Efficiency:
    """The efficiency set ``low``, ``mid`` or ``high``."""
    sets = _load("deployments")["efficiency"]
    if name not in sets:
        raise UnknownNameError(f"unknown efficiency set {name!r}; known: {', '.join(sets)}")
    return Efficiency(name, float(sets[name]["compute"]), float(sets[name]["bandwidth"]))


def get_deployment(name: str = DEFAULT_DEPLOYMENT) -> Deployment:
    """Resolve deployment preset ``name`` (error lists the known names).

    A disaggregated preset (``prefill_count`` set) resolves into the whole system plus its two pools:
    ``prefill_count`` GPUs for prefill and the rest for decode, each pool with the engine limits of the
    preset (or of its ``[NAME.prefill]`` / ``[NAME.decode]`` tables), and the KV transfer bandwidth
    ``kv_transfer_gbps_per_gpu`` (GB/s per GPU of the smaller pool). A ``name`` ending in ``.toml`` is a
    twin preset file (:func:`agentperf_kit.sim.twin.load_twin`)."""
    if name.lower().endswith(".toml"):  # a twin preset file written by ``agentperf profile``
        from .twin import load_twin

        return load_twin(name)
    deps = _load("deployments")
    if name not in deps or name == "efficiency":
        raise UnknownNameError(f"unknown deployment preset {name!r}; known: {', '.join(list_deployments())}")
    d = deps[name]
    whole = _resolve(name, d, int(d["count"]))
    if "prefill_count" not in d:
        return whole
    n_pre = int(d["prefill_count"])
    n_dec = int(d["count"]) - n_pre
    if n_pre < 1 or n_dec < 1:
        raise ValueError(f"deployment {name!r}: prefill_count must leave at least one GPU to each pool")
    base = {k: v for k, v in d.items() if k not in ("prefill", "decode")}
    pre = _resolve(f"{name}/prefill", {**base, **d.get("prefill", {})}, n_pre)
    dec = _resolve(f"{name}/decode", {**base, **d.get("decode", {})}, n_dec)
    bw = float(d["kv_transfer_gbps_per_gpu"]) * 1e9 * min(n_pre, n_dec)
    return replace(whole, prefill_pool=pre, decode_pool=dec, kv_transfer_bytes_per_s=bw)


def _resolve(name: str, d: dict[str, Any], n: int) -> Deployment:
    acc = _load("accelerators")[d["accelerator"]]
    m = _load("models")[d["model"]]
    wbpp = float(m["weight_bytes_per_param"])
    # compute precision: FP8 where the model's weights are <= 1 byte; FP4 peak is not used (activations FP8)
    peak = acc["fp8_tflops"] if wbpp <= 1.0 else acc["bf16_tflops"]
    weight_bytes = m["total_params_b"] * 1e9 * wbpp
    memory = acc["hbm_gb"] * 1e9 * n
    kv_bytes = float(m["kv_bytes_per_token"])
    dense_bytes = m["dense_params_b"] * 1e9 * wbpp
    replicas = n if d.get("attention", "tp") == "dp" else 1
    kv_cap = int(
        max(0.0, memory * d["memory_utilization"] - weight_bytes - dense_bytes * (replicas - 1)) / kv_bytes
    )
    attn_peak = acc[f"{m.get('attention_precision', 'bf16')}_tflops"]
    return Deployment(
        name=name,
        label=d["label"],
        accelerator=d["accelerator"],
        accelerator_count=n,
        model=d["model"],
        model_label=m["label"],
        max_num_seqs=int(d["max_num_seqs"]),
        max_num_batched_tokens=int(d["max_num_batched_tokens"]),
        flops_per_s=peak * 1e12 * n,
        attn_flops_per_s=attn_peak * 1e12 * n,
        bandwidth_bytes_per_s=acc["hbm_tbps"] * 1e12 * n,
        memory_bytes=memory,
        weight_bytes=weight_bytes,
        dense_weight_bytes=dense_bytes,
        dense_weight_replicas=replicas,
        expert_weight_bytes_per_layer=m["expert_params_b_per_layer"] * 1e9 * wbpp,
        moe_layers=int(m["moe_layers"]),
        routed_experts=int(m["routed_experts"]),
        experts_per_token=int(m["experts_per_token"]),
        active_params=m["active_params_b"] * 1e9,
        kv_bytes_per_token=kv_bytes,
        kv_capacity_tokens=kv_cap,
        max_context_tokens=int(m["max_context_tokens"]),
        attn_flops_decode_per_pair=float(m["attn_flops_decode_per_pair"]),
        attn_flops_prefill_per_pair=float(m["attn_flops_prefill_per_pair"]),
        step_overhead_s=d["step_overhead_ms"] / 1e3 + d["per_layer_overhead_us"] * m["layers"] / 1e6,
        tdp_w_per_accelerator=float(acc["tdp_w"]),
        idle_w_per_accelerator=float(acc["idle_w"]),
        projection=bool(acc.get("projection", False)),
        kv_policy=str(d.get("kv_policy", "preempt")),
    )
