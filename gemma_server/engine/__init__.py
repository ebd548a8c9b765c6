"""Token ids in, token ids out: compiled steps (executor) and generation loops around them."""
