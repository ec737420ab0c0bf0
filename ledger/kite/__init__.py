"""Talking to Kite: payload models, the rate limiter, the gateway, postbacks, the sandbox."""
