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

__all__ = [
    "DEFAULT_DEPLOYMENT",
    "Deployment",
    "Efficiency",
    "get_deployment",
    "list_deployments",
    "physics",
    "with_mtp",
]

DEFAULT_DEPLOYMENT = "h200x8-dsv4pro"


@cache
def _load(kind: str) -> dict[str, Any]:
    text = resources.files("agentperf_kit.sim").joinpath(f"presets/{kind}.toml").read_text()
    return tomllib.loads(text)


@dataclass(frozen=True, slots=True)
class Efficiency:
    """Roofline utilizations (share of peak FLOP/s and of HBM bandwidth a step achieves) and ``latency``,
    a multiplier of the fixed latency terms (per-step and per-layer overhead, collective latencies)."""

    name: str
    compute: float
    bandwidth: float
    latency: float = 1.0


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
    step_overhead_s: float  # latency floor: fixed per step + per layer
    tdp_w_per_accelerator: float
    idle_w_per_accelerator: float
    projection: bool
    kv_policy: str = "preempt"  # "preempt" (vLLM: recompute) or "reserve" (whole output at admission)
    # prefill/decode disaggregation: the two pools (each a Deployment) and the KV transfer bandwidth
    prefill_pool: Deployment | None = None
    decode_pool: Deployment | None = None
    kv_transfer_bytes_per_s: float = 0.0
    # -- named terms of the step-time model beyond the roofline (presets/physics.toml) -------------------
    expert_active_params: float = 0.0  # routed-expert parameters active per token (top-k x layers)
    expert_flops_per_s: float = 0.0  # aggregate peak for the expert GEMMs (BF16 under W4A16 dequant)
    expert_bandwidth_factor: float = 1.0  # multiplies the bandwidth efficiency of expert-weight reads
    expert_imbalance: float = 1.0  # busiest GPU's expert load / mean (EP > 1)
    attn_flops_per_query: float = 0.0  # attention FLOPs per query token independent of context (sparse)
    kv_read_bytes_per_query: float = 0.0  # KV bytes read per decoding sequence independent of context
    kv_read_bytes_per_ctx: float = 0.0  # KV bytes read per context token of a decoding sequence
    overlap: float = 1.0  # compute/memory overlap: max(c, m) + (1 - overlap) x min(c, m)
    ep_size: int = 1  # expert-parallel ranks (all-to-all per MoE layer when > 1)
    a2a_latency_s: float = 0.0  # fixed all-to-all latency per MoE layer (dispatch + combine)
    a2a_bytes_per_token: float = 0.0  # top-k x hidden x bytes per value, per token and MoE layer
    a2a_link_bytes_per_s: float = 0.0  # per-rank link bandwidth of the all-to-all (NVLink or RDMA)
    a2a_exposed: float = 1.0  # share of the all-to-all not hidden behind compute
    tp_internode_collectives: int = 0  # all-reduces per step over the scale-out network (TP across nodes)
    tp_allreduce_latency_s: float = 0.0
    tp_bytes_per_token: float = 0.0  # hidden x 2 B
    scaleout_bytes_per_s: float = 0.0  # per GPU
    mtp: bool = False  # multi-token prediction: 1 draft token per decode step
    mtp_draft_tokens: int = 0
    mtp_acceptance: float = 0.0
    nodes: int = 1

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
    e = sets[name]
    return Efficiency(name, float(e["compute"]), float(e["bandwidth"]), float(e.get("latency", 1.0)))


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


def with_mtp(dep: Deployment, on: bool = True) -> Deployment:
    """``dep`` with multi-token prediction switched on (``physics.toml [mtp]`` values) or off."""
    mtp = physics()["mtp"]
    return replace(
        dep,
        mtp=on,
        mtp_draft_tokens=int(mtp["draft_tokens"]) if on else 0,
        mtp_acceptance=float(mtp["acceptance"]) if on else 0.0,
    )


def physics() -> dict[str, Any]:
    """The named step-time terms of ``presets/physics.toml`` (values and sources)."""
    return _load("physics")


def _term(d: dict[str, Any], table: str, key: str) -> Any:
    """A physics value: the deployment's own ``key`` if set, else ``physics.toml``'s ``[table] key``."""
    return d.get(key, physics()[table][key])


def _resolve(name: str, d: dict[str, Any], n: int) -> Deployment:
    acc = _load("accelerators")[d["accelerator"]]
    m = _load("models")[d["model"]]
    ph = physics()
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
    # experts in FP4 on an accelerator without FP4 tensor cores: dequantizing W4A16 kernels
    fp4_dequant = m.get("expert_precision") == "fp4" and float(acc.get("fp4_tflops", 0)) == 0
    expert_peak = acc[f"{ph['fp4_dequant']['compute_precision']}_tflops"] if fp4_dequant else peak
    expert_bw = float(_term(d, "fp4_dequant", "bandwidth_factor")) if fp4_dequant else 1.0
    node = int(acc.get("node_gpus", 8))
    nodes = -(-n // node)
    moe = int(m["routed_experts"]) > 0
    ep = n if (moe and replicas > 1) else 1  # data-parallel attention with the experts spread over every GPU
    hidden = float(m.get("hidden", 0))
    a2a = ph["ep_a2a"]
    if ep > node:
        link = float(a2a["rdma_gbps"])
    else:
        link = float(acc.get("a2a_nvlink_gbps", a2a["nvlink_hopper_gbps"]))
    tp_cross = replicas == 1 and nodes > 1  # a tensor-parallel group spanning nodes
    tp = ph["internode_tp"]
    expert_active = int(m["experts_per_token"]) * float(m["expert_params_b_per_layer"]) * 1e9
    expert_active *= int(m["moe_layers"])
    mtp = bool(d.get("mtp", False))
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
        expert_active_params=expert_active,
        expert_flops_per_s=expert_peak * 1e12 * n,
        expert_bandwidth_factor=expert_bw,
        expert_imbalance=float(_term(d, "expert_imbalance", "factor")) if ep > 1 else 1.0,
        attn_flops_per_query=float(m.get("attn_flops_per_query", 0.0)),
        kv_read_bytes_per_query=float(m.get("kv_read_bytes_per_query", 0.0)),
        kv_read_bytes_per_ctx=float(m.get("kv_read_bytes_per_ctx", kv_bytes)),
        overlap=float(d.get("overlap", ph["overlap"]["compute_memory"])),
        ep_size=ep,
        a2a_latency_s=float(_term(d, "ep_a2a", "a2a_latency_us")) / 1e6 if ep > 1 else 0.0,
        a2a_bytes_per_token=int(m["experts_per_token"]) * hidden * float(a2a["a2a_bytes_per_value"]),
        a2a_link_bytes_per_s=link * 1e9,
        a2a_exposed=float(_term(d, "ep_a2a", "a2a_exposed")),
        tp_internode_collectives=2 * int(m["layers"]) if tp_cross else 0,
        tp_allreduce_latency_s=float(_term(d, "internode_tp", "allreduce_latency_us")) / 1e6,
        tp_bytes_per_token=hidden * 2.0,
        scaleout_bytes_per_s=float(tp["scaleout_gbps"]) * 1e9,
        mtp=mtp,
        mtp_draft_tokens=int(ph["mtp"]["draft_tokens"]) if mtp else 0,
        mtp_acceptance=float(_term(d, "mtp", "acceptance")) if mtp else 0.0,
        nodes=nodes,
    )
