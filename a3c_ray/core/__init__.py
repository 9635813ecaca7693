"""The service's logic, free of transport: the validated config, environments, networks,
losses, the rollout worker, the parameter server, per-node gradient aggregation and
checkpoint storage. Plain classes and functions, testable without Ray."""
