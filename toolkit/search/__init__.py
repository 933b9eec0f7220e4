"""Hardware-aware architecture search: spaces, supernet, latency model, study, report."""
