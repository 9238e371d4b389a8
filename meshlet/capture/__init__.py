"""Capturing the pod's traffic: the nftables ruleset (pure) and applying it."""
