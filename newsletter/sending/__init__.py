"""The sending engine: a queue of due ledger rows worked by parallel connections, with retries and a throttle."""
