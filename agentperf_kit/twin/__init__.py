"""Digital twin of a real server: profile it (:mod:`.profile`), fit a step-time model (:mod:`.fit`) and
write a preset that ``agentperf sweep --target sim:PATH.toml`` runs in virtual time
(:mod:`agentperf_kit.sim.twin`)."""
