"""NATS-style RPC: register, call, providers found by discovery, calls spread and retried."""
