"""Estimation, policies, the safety supervisor, the real-time loop, outlets, recording,
configuration and the `vnsloop` command line."""
