"""What a run reports: the run log (one JSON record per line) and its reader, the console
and TensorBoard reporter, and Ray metrics."""
