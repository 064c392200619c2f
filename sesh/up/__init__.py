"""``sesh up``: the seed's topology on localhost as supervised child processes, a control socket, ``sesh ctl``."""
