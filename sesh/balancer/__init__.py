"""The load balancer: members, lbmethods, sticky routing, proxying, balancer-manager."""
