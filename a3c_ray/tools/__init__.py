"""Commands around runs: evaluate, plot, compare, scores, bench (and bench scale), diagnose."""
