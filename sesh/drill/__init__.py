"""``sesh drill``: simulated browsers through the balancer, faults injected through ``sesh up``, a loss report."""
