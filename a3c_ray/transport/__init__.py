"""How the core's parts run and talk: the backend interface the driver loop uses, the Ray
backend (actors defined at module level, per-node aggregators) and the serial backend
(the same classes in one process)."""
